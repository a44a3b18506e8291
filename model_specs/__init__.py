"""The default audit specs.  Installed as the package ``audit.model_specs`` so that
``pytest --pyargs audit`` finds them outside a checkout."""

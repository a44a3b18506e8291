"""equilaw's caches, in one folder: the statistics cache (:mod:`.stats_cache`), the
file-hash index (:mod:`.index`) and the converted GGUF checkpoints
(:mod:`.converted`), configured once by :class:`.settings.CacheSettings` and
passed to what uses them; :mod:`.folder` owns the names written there and
clearing them.  numpy and the standard library only: no backend library is
imported.  This file imports nothing, so that a backend importing the settings
or the converted checkpoints does not load the statistics cache.
"""

"""The contract every registered backend keeps (audit.backends.base.Backend), run
against each name in the one registry on the session's tiny random Llama: what
``info`` says, tokens and BOS, the shapes and dtypes of a forward pass, that its
hidden states are fresh and writable, determinism, the probe loss, and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit.backends import BACKENDS, Backend, open_backend
from audit.errors import BackendError
from audit.spec import ModelSpec, Spec
from audit.synthetic.tiny import BOS_ID, TINY_LAYERS, TINY_WIDTH, VOCAB_SIZE

IDS = np.array([[BOS_ID, 40, 41, 42, 43, 44], [BOS_ID, 50, 51, 52, 53, 54]], dtype=np.int64)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tiny_model_dir: Path) -> Backend:
    """Each registered backend on the same tiny Llama (onnx: its exported file)."""
    onnx = str(request.getfixturevalue("tiny_onnx")) if request.param == "onnx" else None
    return open_backend(Spec(name="tiny", model=ModelSpec(path=str(tiny_model_dir), onnx=onnx),
                             backend=request.param))


def test_names_itself_and_describes_the_model_without_loading(backend) -> None:
    assert isinstance(backend, Backend) and backend.backend_name in BACKENDS
    info = backend.info()
    assert (info.num_layers, info.width) == (TINY_LAYERS, TINY_WIDTH)
    assert info.norm.kind == "rms" and info.norm.eps == 1e-5
    assert len(backend.weights_sha256()) == 64 and isinstance(backend.versions(), dict)


def test_tokens_without_special_tokens_and_the_bos(backend) -> None:
    ids = backend.encode("ab")  # one byte token each, no BOS
    assert len(ids) == 2 and ids[0] != ids[1] and all(3 <= i < 259 for i in ids)
    assert backend.encode("ba") == ids[::-1] and backend.bos_token_id == BOS_ID
    tok = backend.tokenizer_info()
    assert tok["bos_token_id"] == BOS_ID and len(tok["vocab_sha256"]) == 64


def test_documents_with_the_default_special_tokens_truncated(backend) -> None:
    """``encode_document`` is ``tokenizer(text, truncation=True, max_length=...)``: the
    tiny byte tokenizer adds its BOS by default, and the BOS counts towards the length."""
    ids = backend.encode("abcdef")
    assert backend.encode_document("abcdef", 512) == [BOS_ID, *ids]
    assert backend.encode_document("abcdef", 4) == [BOS_ID, *ids[:3]]
    assert all(type(i) is int for i in backend.encode_document("ab", 8))


def test_forward_shapes_dtypes_fresh_arrays_and_determinism(backend) -> None:
    out = backend.forward(IDS, loss=True)
    b, t = IDS.shape
    assert out.hidden.shape == (TINY_LAYERS + 1, b, t, TINY_WIDTH)
    assert out.hidden.dtype == np.float32 and out.hidden.flags.writeable
    assert out.token_nll.shape == (b, t - 1) and out.token_nll.dtype == np.float64
    assert np.all(np.isfinite(out.token_nll)) and np.all(out.token_nll > 0)
    assert out.token_nll.mean() == pytest.approx(np.log(VOCAB_SIZE), abs=1.0)
    again = backend.forward(IDS, loss=False)
    assert again.token_nll is None and again.loss_seconds == 0.0
    np.testing.assert_array_equal(again.hidden, out.hidden)
    again.hidden[...] = 0  # the caller owns the array: the next pass is unaffected
    np.testing.assert_array_equal(backend.forward(IDS, loss=False).hidden, out.hidden)
    assert backend.head_note is None


def test_bad_input_is_a_backend_error(backend) -> None:
    with pytest.raises(BackendError, match=r"input_ids must be an integer array \[batch, tokens\]"):
        backend.forward(np.zeros(5, dtype=np.int64), loss=False)
    with pytest.raises(BackendError, match=r"input_ids must be an integer array"):
        backend.forward(IDS.astype(np.float32), loss=False)

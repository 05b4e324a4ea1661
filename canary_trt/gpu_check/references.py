"""DIR/check.json and the .npy files beside it: what `prepare` recorded with ONNX Runtime (fp32) and
`run` compares the GPU server with. numpy + json only: the GPU image reads it.

DIR/
  checkpoint/     the random tiny checkpoint (the engines stage opens it too)
  gpu/            `export --target gpu --stage prepare`, then `--stage engines` in the GPU image
  cpu/            `export --target cpu` (fp32): the ONNX Runtime yardstick
  check.json      clips, reference tokens and their top-2 logit margins, encoder reference files
  check/          clip samples and reference embeddings (.npy, float32)
  logs/           engines.log, tritonserver.log (written by `run`)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInput, MissingFile

CHECK_FILE = "check.json"
DATA_DIR = "check"
FORMAT = 1  # bump when check.json changes shape


@dataclass(frozen=True)
class TokenReference:
    """One clip through canary_qwen: ONNX Runtime's greedy tokens and, per step, the gap between its two
    best logits (one more step than tokens when the clip ended with <|im_end|>: that choice counts too)."""

    name: str
    source: str
    seconds: float
    audio: str  # .npy path relative to DIR
    token_ids: list[int]
    margins: list[float]
    text: str


@dataclass(frozen=True)
class EncoderReference:
    name: str
    source: str
    seconds: float
    audio: str
    embeddings: str  # .npy [rows, hidden] float32, ONNX Runtime's encoder output for this clip alone
    rows: int


@dataclass(frozen=True)
class References:
    directory: Path
    preset: str
    max_new_tokens: int
    transcribe: list[TokenReference]
    encoder: list[EncoderReference]
    created_with: dict

    def load(self, relative: str) -> np.ndarray:
        path = self.directory / relative
        if not path.is_file():
            raise MissingFile(f"{path} is missing: run `canary-trt gpu-check prepare --out {self.directory}` again")
        return np.load(path)

    def save(self) -> Path:
        body = {"format": FORMAT, "preset": self.preset, "max_new_tokens": self.max_new_tokens,
                "created_with": self.created_with, "transcribe": [asdict(t) for t in self.transcribe],
                "encoder": [asdict(e) for e in self.encoder]}  # fmt: skip
        path = self.directory / CHECK_FILE
        path.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        return path


def read_references(directory: str | Path) -> References:
    directory = Path(directory).resolve()
    path = directory / CHECK_FILE
    if not path.is_file():
        raise MissingFile(f"{path} not found: run `canary-trt gpu-check prepare --out {directory}` "
                                "(in the CPU image) first")  # fmt: skip
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if body.get("format") != FORMAT:
            raise InvalidInput(f"{path} has format {body.get('format')!r}, this version reads {FORMAT}: prepare it again")
        return References(directory, body["preset"], int(body["max_new_tokens"]),
                          [TokenReference(**t) for t in body["transcribe"]],
                          [EncoderReference(**e) for e in body["encoder"]], body.get("created_with", {}))  # fmt: skip
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{path} is not a gpu-check reference file ({type(e).__name__}: {e})") from None

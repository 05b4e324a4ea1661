"""Raw waveform -> audio embeddings as ONE ONNX graph: the matmul-DFT front end, NeMo's ConformerEncoder
and the `proj` Linear. The same file feeds ONNX Runtime (CPU) and the TensorRT engine build (GPU).

Contract: `WAV` f32 [B, N] (zero-padded) + `WAV_LENS` int32 [B] -> `audio_embeddings` f32 [B, T', H]
+ `audio_lengths` int32 [B]; rows >= audio_lengths[b] are padding. B, N and T' are dynamic.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint import PERCEPTION, Checkpoint, perception_weights
from ..contract import ENCODER_ONNX, INPUT_WAV, INPUT_WAV_LENS
from ..frontend import LogMelFrontend
from .onnx_files import onnx_file

INPUTS = (INPUT_WAV, INPUT_WAV_LENS)
OUTPUTS = ("audio_embeddings", "audio_lengths")
OPSET = 17  # LayerNormalization as one op, which TensorRT keeps in FP32 by name


class EncoderGraph(nn.Module):
    """Named `frontend`, `encoder`, `proj` so ONNX node names start with /frontend/, /encoder/, /proj/
    (the TensorRT build pins /frontend/* to FP32 by these names)."""

    def __init__(self, checkpoint: Checkpoint, weights: dict):
        super().__init__()
        from omegaconf import OmegaConf
        from nemo.collections.speechlm2.modules.perception import AudioPerceptionModule

        perception = AudioPerceptionModule(OmegaConf.create(checkpoint.config["perception"]))
        perception.load_state_dict({k: v.float() for k, v in perception_weights(weights).items()}, strict=True)
        self.frontend = LogMelFrontend.from_weights(weights, checkpoint.config["perception"]["preprocessor"])
        self.encoder, self.adapter, self.proj = perception.encoder, perception.modality_adapter, perception.proj
        self.eval()

    def forward(self, wav: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, frames = self.frontend(wav, wav_lens)
        encoded, lengths = self.encoder(audio_signal=features, length=frames)
        encoded, lengths = self.adapter(audio_signal=encoded, length=lengths)
        return self.proj(encoded.transpose(1, 2)), lengths.to(torch.int32)


def export_encoder_onnx(checkpoint: Checkpoint, out_dir: Path) -> Path:
    from nemo.core.classes import typecheck

    graph = EncoderGraph(checkpoint, checkpoint.read_weights((PERCEPTION,)))
    # Two clips of different lengths, so no length-dependent branch is traced as a constant.
    example = (torch.randn(2, 32000) * 0.1, torch.tensor([32000, 20000], dtype=torch.int32))
    # NeMo's type checks do not trace
    with typecheck.disable_checks(), torch.no_grad(), onnx_file(out_dir / ENCODER_ONNX) as scratch:
        torch.onnx.export(
            graph, example, str(scratch), dynamo=False, opset_version=OPSET,
            input_names=list(INPUTS), output_names=list(OUTPUTS),
            dynamic_axes={INPUT_WAV: {0: "batch", 1: "samples"}, INPUT_WAV_LENS: {0: "batch"},
                          "audio_embeddings": {0: "batch", 1: "frames"}, "audio_lengths": {0: "batch"}},
        )  # fmt: skip
    return out_dir / ENCODER_ONNX

"""NeMo's log-mel front end rewritten with plain tensor ops, so it exports to ONNX and TensorRT.

TensorRT 10 parses no complex STFT/DFT, so the STFT is a strided Conv1d whose kernels are the windowed
cos/sin DFT bases; the rest (pre-emphasis, power, mel matmul, log, per-feature normalization over valid
frames) follows `FilterbankFeatures.forward` of NeMo >= 2.5 step by step (docs/MODEL.md#audio-front-end). It uses the
checkpoint's stored bf16 filterbank and window, never recomputed values. Parity with NeMo is tested.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import InvalidInput

LOG_GUARD = 2.0**-24  # NeMo's log_zero_guard_value ("add")
STD_GUARD = 1e-5  # NeMo's CONSTANT added to the std
PREEMPHASIS = 0.97


class LogMelFrontend(nn.Module):
    def __init__(self, fb: torch.Tensor, window: torch.Tensor, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        n_bins = n_fft // 2 + 1
        # torch.stft centres a shorter window inside the n_fft frame
        left = (n_fft - window.numel()) // 2
        padded = torch.zeros(n_fft, dtype=torch.float64)
        padded[left : left + window.numel()] = window.double()
        angle = 2 * math.pi * torch.outer(torch.arange(n_bins, dtype=torch.float64), torch.arange(n_fft, dtype=torch.float64)) / n_fft
        basis = torch.cat([torch.cos(angle) * padded, -torch.sin(angle) * padded])  # [2 * bins, n_fft]
        self.register_buffer("dft", basis.float().unsqueeze(1))  # Conv1d weight [2 * bins, 1, n_fft]
        self.register_buffer("fb", fb.float().reshape(-1, n_bins))  # [mels, bins]

    @classmethod
    def from_weights(cls, weights: dict, preprocessor: dict) -> "LogMelFrontend":
        """From the checkpoint's `perception.preprocessor.featurizer.{fb,window}` and its preprocessor config."""
        if preprocessor.get("normalize") != "per_feature" or not preprocessor.get("log", True):
            raise InvalidInput("only NeMo's per_feature-normalized log-mel front end is supported")
        prefix = "perception.preprocessor.featurizer."
        hop = round(preprocessor["window_stride"] * preprocessor["sample_rate"])
        return cls(weights[prefix + "fb"], weights[prefix + "window"], preprocessor["n_fft"], hop)

    def forward(self, wav: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, N] float32, zero-padded; wav_lens [B] -> features [B, mels, N // hop + 1], frames [B] int64."""
        wav_lens = wav_lens.long()
        frames = wav_lens // self.hop_length  # NeMo's get_seq_len with centre padding of n_fft // 2
        emphasized = torch.cat([wav[:, :1], wav[:, 1:] - PREEMPHASIS * wav[:, :-1]], dim=1)
        sample_index = torch.arange(wav.shape[1], device=wav.device).unsqueeze(0)
        emphasized = emphasized * (sample_index < wav_lens.unsqueeze(1)).to(wav.dtype)
        padded = nn.functional.pad(emphasized.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2))
        spectrum = nn.functional.conv1d(padded, self.dft, stride=self.hop_length)  # [B, 2 * bins, T]
        real, imag = spectrum.chunk(2, dim=1)
        power = real * real + imag * imag
        logmel = torch.log(torch.matmul(self.fb, power) + LOG_GUARD)  # [B, mels, T]

        valid = (torch.arange(logmel.shape[2], device=wav.device).unsqueeze(0) < frames.unsqueeze(1)).unsqueeze(1)
        valid = valid.to(logmel.dtype)
        count = frames.to(logmel.dtype).clamp(min=1.0).reshape(-1, 1, 1)
        mean = (logmel * valid).sum(dim=2, keepdim=True) / count
        centered = (logmel - mean) * valid
        # unbiased std; a single frame has none (NeMo: NaN -> 0)
        var = (centered * centered).sum(dim=2, keepdim=True) / (count - 1.0).clamp(min=1.0)
        std = torch.where(count > 1.0, torch.sqrt(var), torch.zeros_like(var)) + STD_GUARD
        return centered / std, frames

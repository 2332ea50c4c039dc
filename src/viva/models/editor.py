"""`VivaEditor`: the VIVA model composed from the four interfaces (PAPER.md section 1).

    source video --VAE.encode--> z_src ---------------------+ (reference latent appended as one more frame)
    noise / target ---------------------------> z_t --------+--> channel concat -> projector -> DiT
    instruction + first frame (+ reference) --> Instructor --> TokenRefiner ------------------^

The editor owns what every backbone shares: turning pixels into conditions once (`encode_condition`, so
Edit-GRPO can reuse them for a group of samples), the velocity with condition dropout, the masked
flow-matching loss, and guided ODE sampling. Backbones only implement the interfaces.

Pixels are float in [-1, 1], videos [B, 3, T, H, W]; latents [B, C, T, h, w].
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
from torch import nn

from viva.flow import (
    add_noise,
    condition_dropout,
    euler_sample,
    guided_velocity,
    mask_to_latent,
    masked_flow_loss,
    sample_timesteps,
    sigma_schedule,
    velocity_target,
)
from viva.models.hub import ComponentConfig
from viva.models.interfaces import Denoiser, Instructor, TokenRefiner, VideoAutoencoder

SIGMA_GRIDS = ("linear", "diffusers")


def sampling_sigmas(num_steps: int, shift: float = 1.0, grid: str = "linear") -> torch.Tensor:
    """[num_steps + 1] float32 sigmas from 1 to 0. grid "linear": `sigma_schedule(num_steps, shift)`;
    "diffusers": exactly diffusers' FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)
    sigmas (linspace(1, sigma_min, N) shifted, then 0), so a backbone reproduces its diffusers pipeline."""
    if grid == "linear":
        return sigma_schedule(num_steps, shift=shift)
    if grid != "diffusers":
        raise ValueError(f"sigma_grid must be one of {', '.join(SIGMA_GRIDS)}, got {grid!r}")
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.to(torch.float32).cpu()


@dataclass
class EditorConfig(ComponentConfig):
    """height/width/num_frames: the clip size the model works at (inputs are fitted to it).
    mask_weight: w_m of the masked loss (1 + w_m * M). p_drop_*: training condition dropout
    (InstructPix2Pix-style: text only, video only, both). timestep_*: SFT time sampling. shift: the
    sampling schedule's shift. default_steps / default_guidance_scale / default_video_guidance_scale:
    the sampling settings `VivaPipeline` and `viva edit` use when none are given (text scale 3.0 and
    video scale 1.5, 20 Euler steps: InstructPix2Pix-style two-scale guidance, video scale lower because
    the source is already strongly tied to the output through channel concatenation). sigma_grid: the
    sampling grid, "linear" (`sigma_schedule`) or "diffusers" (FlowMatchEulerDiscreteScheduler's
    `set_timesteps(N)` grid, which the Wan / Lucy-Edit pipelines use; see `sampling_sigmas`)."""

    height: int = 64
    width: int = 64
    num_frames: int = 8
    mask_weight: float = 2.0
    p_drop_text: float = 0.05
    p_drop_video: float = 0.05
    p_drop_both: float = 0.05
    timestep_kind: str = "logit_normal"
    timestep_mean: float = 0.0
    timestep_std: float = 1.0
    shift: float = 1.0
    default_steps: int = 20
    default_guidance_scale: float = 3.0
    default_video_guidance_scale: float = 1.5
    sigma_grid: str = "linear"

    def __post_init__(self) -> None:
        if self.sigma_grid not in SIGMA_GRIDS:
            raise ValueError(f"sigma_grid must be one of {', '.join(SIGMA_GRIDS)}, got {self.sigma_grid!r}")


@dataclass
class Condition:
    """Everything a prompt contributes, computed once per prompt.

    tokens [B,L,D] / token_mask [B,L]: refined instruction tokens are recomputed per timestep by the
    refiner, so these are the INSTRUCTOR outputs; source [B,C,T',h,w]: source latents, with the reference
    latent appended along time when `has_reference` (T' = T + 1); num_frames: T, the frames to generate.
    """

    tokens: torch.Tensor
    token_mask: torch.Tensor
    source: torch.Tensor
    num_frames: int
    has_reference: bool

    @property
    def latent_frames(self) -> int:
        """Latent frames to generate: the source latents' frames without the reference slot (equals
        num_frames for VAEs without temporal compression)."""
        return self.source.shape[2] - int(self.has_reference)

    def repeat(self, n: int) -> "Condition":
        """The condition of each prompt repeated n times (prompt-major: [p0]*n + [p1]*n ...)."""
        return replace(
            self,
            tokens=self.tokens.repeat_interleave(n, 0),
            token_mask=self.token_mask.repeat_interleave(n, 0),
            source=self.source.repeat_interleave(n, 0),
        )


class VivaEditor(nn.Module):
    """Composition of a VideoAutoencoder, an Instructor, a TokenRefiner and a Denoiser.

    Trainable in SFT: the refiner and the denoiser (whose projector reads [noisy | source]); the VAE and
    the instructor are frozen (PAPER.md section 2).
    """

    def __init__(
        self,
        vae: VideoAutoencoder,
        instructor: Instructor,
        refiner: TokenRefiner,
        denoiser: Denoiser,
        config: EditorConfig | None = None,
    ):
        super().__init__()
        self.vae = vae
        self.instructor = instructor
        self.refiner = refiner
        self.denoiser = denoiser
        self.config = config or EditorConfig()
        for frozen in (self.vae, self.instructor):
            frozen.requires_grad_(False)
            frozen.eval()
        self._offload = False

    def place(self, device: torch.device | str, offload_frozen: bool = False) -> "VivaEditor":
        """Move the editor to `device`; with `offload_frozen` only the refiner and denoiser go there and the
        frozen parts stay in CPU memory (see `offload_frozen`)."""
        if not offload_frozen:
            return self.to(device)
        self.refiner.to(device)
        self.denoiser.to(device)
        return self.offload_frozen()

    def offload_frozen(self, enabled: bool = True) -> "VivaEditor":
        """CPU offload of the frozen parts: the VAE and the instructor live in CPU memory and visit the
        denoiser's device only for the call that needs them (encode, instruct, decode), so during the
        DiT's forward and backward the accelerator holds no frozen weights (LLaVA-8B: 16 GB in bf16).
        Costs one host<->device copy of each per use. Call after placing the trainable parts."""
        self._offload = enabled
        if enabled:
            self.vae.to("cpu")
            self.instructor.to("cpu")
        return self

    @contextmanager
    def _visiting(self, module: nn.Module) -> Iterator[nn.Module]:
        """`module` on the compute device for the duration (offloaded parts go back to the CPU after)."""
        device = self.device
        if not self._offload or device.type == "cpu":
            yield module
            return
        module.to(device)
        try:
            yield module
        finally:
            module.to("cpu")

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # frozen parts never run in training mode
        self.instructor.eval()
        return self

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"refiner": self.refiner, "denoiser": self.denoiser}

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    # 1. Conditions ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels [B,3,T,H,W] in [-1,1] -> latents [B,C,T,h,w]."""
        with self._visiting(self.vae) as vae:
            return vae.encode(video.to(self.device))

    @torch.no_grad()
    def encode_condition(
        self,
        instructions: list[str],
        source: torch.Tensor,
        references: torch.Tensor | None = None,
        source_latents: torch.Tensor | None = None,
    ) -> Condition:
        """instructions: B strings; source: pixels [B,3,T,H,W] in [-1,1]; references: pixels [B,3,H,W]
        (the whole batch has one, or none) -> Condition. `source_latents` skips the VAE when known."""
        source = source.to(self.device)
        latents = self.encode_video(source) if source_latents is None else source_latents.to(self.device)
        ref_list = None
        if references is not None:
            references = references.to(self.device)
            ref_latent = self.encode_video(references.unsqueeze(2))  # [B,C,1,h,w]
            latents = torch.cat([latents, ref_latent], dim=2)
            ref_list = list(references)
        with self._visiting(self.instructor) as instructor:
            out = instructor(list(instructions), first_frames=source[:, :, 0], references=ref_list)
        return Condition(out.tokens, out.mask, latents, num_frames=source.shape[2], has_reference=references is not None)

    # 2. Velocity -----------------------------------------------------------------------------------
    def velocity(
        self,
        noisy: torch.Tensor,
        cond: Condition,
        timestep: torch.Tensor,
        keep_text: torch.Tensor | None = None,
        keep_video: torch.Tensor | None = None,
        group_size: int = 1,
    ) -> torch.Tensor:
        """Velocity for noisy latents [B,C,T,h,w] at timestep [B]; keep_text / keep_video [B] bool drop
        the instruction (all tokens masked) or the source video (zero latents) per sample.

        group_size G > 1 (Edit-GRPO's groups): `cond` holds P = B / G prompts and `noisy` their samples,
        prompt-major (a prompt's G samples consecutive, as `Condition.repeat` lays them out). The refiner
        then runs once per prompt and its tokens and the source latents are shared by the prompt's samples;
        keep_text / keep_video are per prompt [P], and a prompt's samples must share their timestep."""
        B = noisy.shape[0]
        P = cond.tokens.shape[0]
        if group_size < 1 or P * group_size != B:
            raise ValueError(f"{B} samples are not {P} prompts x group_size {group_size}")
        timestep = timestep.to(noisy.device).expand(B)
        token_mask = cond.token_mask
        if keep_text is not None:
            token_mask = token_mask & keep_text.to(token_mask.device)[:, None]
        source = cond.source
        if keep_video is not None:
            source = source * keep_video.to(source.device, source.dtype).view(-1, 1, 1, 1, 1)
        tokens = self.refiner(cond.tokens, token_mask, timestep[::group_size])
        if group_size > 1:
            tokens = tokens.repeat_interleave(group_size, 0)
            token_mask = token_mask.repeat_interleave(group_size, 0)
            source = source.repeat_interleave(group_size, 0)
        if cond.has_reference:  # a zero "noisy" frame in the reference slot; its output is dropped
            pad = torch.zeros_like(noisy[:, :, :1])
            v = self.denoiser(torch.cat([noisy, pad], dim=2), source, tokens, token_mask, timestep)
            return v[:, :, : noisy.shape[2]]
        return self.denoiser(noisy, source, tokens, token_mask, timestep)

    # 3. Training loss ------------------------------------------------------------------------------
    def training_loss(
        self,
        cond: Condition,
        target_latents: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked flow-matching loss for one batch. target_latents [B,C,T,h,w]; mask: pixel edit mask
        [B,T,H,W] in {0,1} (or None). Noise, timesteps and condition dropout come from `generator`."""
        cfg = self.config
        B = target_latents.shape[0]
        device = target_latents.device
        t = sample_timesteps(B, generator, kind=cfg.timestep_kind, mean=cfg.timestep_mean, std=cfg.timestep_std, device="cpu")
        noise = torch.randn(target_latents.shape, generator=generator, dtype=target_latents.dtype)
        t, noise = t.to(device), noise.to(device)
        keep_text, keep_video = condition_dropout(
            B, generator, p_text=cfg.p_drop_text, p_video=cfg.p_drop_video, p_both=cfg.p_drop_both
        )
        noisy = add_noise(target_latents, noise, t)
        v_pred = self.velocity(noisy, cond, t, keep_text.to(device), keep_video.to(device))
        v_target = velocity_target(target_latents, noise)
        latent_mask = None if mask is None else mask_to_latent(mask.to(device), target_latents.shape)
        loss = masked_flow_loss(v_pred.float(), v_target.float(), latent_mask, mask_weight=cfg.mask_weight)
        return loss, {"loss": float(loss.detach())}

    # 4. Sampling -----------------------------------------------------------------------------------
    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """The sampling grid [N + 1] (1 -> 0) of this editor's config (shift, sigma_grid)."""
        return sampling_sigmas(num_inference_steps, self.config.shift, getattr(self.config, "sigma_grid", "linear"))

    def guided_velocity_fn(
        self, cond: Condition, guidance_scale: float, video_guidance_scale: float, group_size: int = 1
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """v(x, sigma) with two-scale classifier-free guidance (instruction, source video) batched into
        one denoiser call: [full | no text | neither]. Skips passes the scales make unnecessary.
        group_size G: x holds G samples per prompt of `cond` (see `velocity`)."""
        use_uncond = video_guidance_scale != 1.0
        use_no_text = guidance_scale != video_guidance_scale or not use_uncond
        if guidance_scale == 1.0 and not use_uncond:
            return lambda x, sigma: self.velocity(x, cond, sigma, group_size=group_size)
        B = cond.tokens.shape[0]
        ones, zeros = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
        keep_text = [ones] + ([zeros] if use_no_text else []) + ([zeros] if use_uncond else [])
        keep_video = [ones] + ([ones] if use_no_text else []) + ([zeros] if use_uncond else [])
        n = len(keep_text)
        big = Condition(
            torch.cat([cond.tokens] * n),
            torch.cat([cond.token_mask] * n),
            torch.cat([cond.source] * n),
            cond.num_frames,
            cond.has_reference,
        )
        kt, kv = torch.cat(keep_text), torch.cat(keep_video)

        def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            sigmas = sigma.expand(x.shape[0]).repeat(n)
            v = self.velocity(torch.cat([x] * n), big, sigmas, kt, kv, group_size=group_size).chunk(n)
            v_full = v[0]
            v_no_text = v[1] if use_no_text else None
            v_uncond = v[-1] if use_uncond else None
            return guided_velocity(v_full, v_no_text, v_uncond, guidance_scale, video_guidance_scale)

        return fn

    @torch.no_grad()
    def sample(
        self,
        cond: Condition,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        video_guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Edited latents [B,C,T,h,w] by Euler ODE integration from noise (sigma 1 -> 0)."""
        B, C, _, h, w = cond.source.shape
        shape = (B, C, cond.latent_frames, h, w)
        x = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        sigmas = self.sigmas(num_inference_steps).to(self.device)
        fn = self.guided_velocity_fn(cond, guidance_scale, video_guidance_scale)
        return euler_sample(fn, x, sigmas, callback=callback)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B,C,T,h,w] -> pixels [B,3,T,H,W] in [-1,1]."""
        with self._visiting(self.vae) as vae:
            return vae.decode(latents)


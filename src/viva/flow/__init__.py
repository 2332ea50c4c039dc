"""Flow-matching math shared by SFT and Edit-GRPO.

Convention (diffusers / SD3 rectified flow): t = sigma in [0, 1], 1 = pure noise,
x_t = (1 - t) x0 + t noise, target velocity v = noise - x0; sampling runs sigma 1 -> 0 with
x_next = x + v (sigma_next - sigma). Latents are [B, C, T, h, w]; per-sample times are [B].

- schedule: `sample_timesteps`, `sigma_schedule`, `shift_sigmas`
- matching: `add_noise`, `velocity_target`, `mask_to_latent`, `masked_flow_loss`
- guidance: `guided_velocity`, `condition_dropout`
- sampling: `ode_step`, `euler_sample`
- sde:      `flow_sde_step`, `cps_step`, `stochastic_step`, `SDEStepOutput`, `gaussian_log_prob`
- rollout:  `sample_with_logprobs`, `choose_sde_steps`, `StepRecord`
- grpo:     `group_advantages`, `ppo_clip_loss`, `kl_to_reference`
"""

from viva.flow.grpo import group_advantages, kl_to_reference, ppo_clip_loss
from viva.flow.guidance import condition_dropout, guided_velocity
from viva.flow.matching import add_noise, mask_to_latent, masked_flow_loss, velocity_target
from viva.flow.rollout import StepRecord, choose_sde_steps, sample_with_logprobs
from viva.flow.sampling import VelocityFn, euler_sample, ode_step
from viva.flow.schedule import sample_timesteps, shift_sigmas, sigma_schedule
from viva.flow.sde import SDEStepOutput, cps_step, flow_sde_step, gaussian_log_prob, stochastic_step

__all__ = [
    "SDEStepOutput",
    "StepRecord",
    "VelocityFn",
    "add_noise",
    "choose_sde_steps",
    "condition_dropout",
    "cps_step",
    "euler_sample",
    "flow_sde_step",
    "gaussian_log_prob",
    "group_advantages",
    "guided_velocity",
    "kl_to_reference",
    "mask_to_latent",
    "masked_flow_loss",
    "ode_step",
    "ppo_clip_loss",
    "sample_timesteps",
    "sample_with_logprobs",
    "shift_sigmas",
    "sigma_schedule",
    "stochastic_step",
    "velocity_target",
]

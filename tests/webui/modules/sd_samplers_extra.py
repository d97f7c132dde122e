"""modules/sd_samplers_extra.py stand-in: the "Restart" sampler (Xu et al. 2023), written from the paper's
algorithm and A1111's observable behaviour.

A list of Heun steps (2 denoiser calls each, 1 for a step that ends at sigma 0) walks the schedule; with 20 or more
steps the schedule is rebuilt as Karras sigmas for `steps - restart_steps * restart_times` steps, and at the step
whose sigma is nearest 0.1 the walk jumps back up to sigma ~2 (fresh noise added) and descends again, once
(20-35 steps, 9 restart steps) or twice (36+ steps, steps // 4 each). The total stays `steps` Heun steps, so
2 * steps - 1 denoiser calls, and the sigma a call sees is NOT monotonic. The step callback reports the Heun-step
index.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def restart_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1., restart_list=None):
    from modules import sd_samplers_kdiffusion as k

    extra_args = extra_args or {}
    step_id = 0

    def heun_step(x, old_sigma, new_sigma, second_order=True):
        nonlocal step_id
        denoised = k._call(model, x, old_sigma, extra_args)
        slope = k.to_d(x, old_sigma, denoised)
        if callback is not None:
            callback({'x': x, 'i': step_id, 'sigma': new_sigma, 'sigma_hat': old_sigma, 'denoised': denoised})
        dt = new_sigma - old_sigma
        if new_sigma == 0 or not second_order:
            x = x + slope * dt
        else:
            x_2 = x + slope * dt
            slope_2 = k.to_d(x_2, new_sigma, k._call(model, x_2, new_sigma, extra_args))
            x = x + (slope + slope_2) / 2 * dt
        step_id += 1
        return x

    steps = sigmas.shape[0] - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = k.get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item(), device=sigmas.device)
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    # keys: the index of the schedule sigma nearest each given sigma
    restart_at = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}

    walk = []
    for i in range(len(sigmas) - 1):
        walk.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in restart_at:
            continue
        restart_steps, restart_times, restart_max = restart_at[i + 1]
        low = i + 1
        high = int(torch.argmin(abs(sigmas - restart_max), dim=0))
        if high < low:
            segment = k.get_sigmas_karras(restart_steps, sigmas[low].item(), sigmas[high].item(), device=sigmas.device)[:-1]
            for _ in range(restart_times):
                walk.extend(zip(segment[:-1], segment[1:]))

    last_sigma = None
    for old_sigma, new_sigma in walk:
        if last_sigma is not None and last_sigma < old_sigma:  # a jump back up: renoise to the higher sigma
            x = x + k.ktorch.randn_like(x) * s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
    return x

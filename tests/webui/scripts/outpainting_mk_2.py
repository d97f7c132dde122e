"""Stand-in for A1111's scripts/outpainting_mk_2.py ("Outpainting mk2", img2img only), loaded like the other root
scripts (module name "outpainting_mk_2.py").

Kept: the title, the six controls (an HTML note first) and their defaults, and run(): p.inpaint_full_res = False,
p.inpainting_fill = 1 ("original"), p.mask_blur_x/y = 4 x the blur on the axes being grown (0 otherwise), the
target canvas rounded up to multiples of 64 (growth split as in poor man's outpainting), p.n_iter = 1, and one
process_images(p) call per grown direction (left, right, up, down) per original batch, each on the previous
direction's results: every one of the batch_size images is pasted into a canvas grown on that side (rounded up to
64) whose new area is filled with colour-matched noise, p.width/p.height become the strip that is processed (at
most the original processing size along the grown axis), p.init_images = the strips (the batch), p.image_mask = the
strip of the (RGB) mask -- set per image, so the last one wins -- and p.latent_mask = a mask inset by 2 x blur.
p.seed is never changed (a -1 seed is re-rolled by every call). The outputs are pasted back and cropped; the job
returns a grid (if wanted) and the images.
Simplified: the "matched noise" is seeded uniform noise histogram-matched to the kept pixels (A1111 also shapes its
spectrum with an FFT of the source); only the masked area and its statistics matter to the model here.
"""
import math

import gradio as gr
import numpy as np
import skimage.exposure
from PIL import Image, ImageDraw

import modules.scripts as scripts
from modules import images
from modules.processing import Processed, process_images
from modules.shared import opts, state


def get_matched_noise(np_src_image, np_mask_rgb, noise_q=1, color_variation=0.05):
    """The source (H, W, 3 floats in 0..1) with its masked part (mask 1) replaced by deterministic noise whose
    colour distribution matches the unmasked part; `color_variation` mixes per-channel noise into grey noise."""
    mask = np_mask_rgb.mean(axis=2)
    fill, reference = mask > 1e-6, mask < 1e-3
    noise = np.random.default_rng(0).random(np_src_image.shape)
    grey = noise.mean(axis=2, keepdims=True)
    noise = noise * color_variation + grey * (1.0 - color_variation)
    if fill.any() and reference.any():
        noise[fill] = skimage.exposure.match_histograms(noise[fill], np_src_image[reference], channel_axis=1)
    matched = np_src_image * (1.0 - np_mask_rgb) + noise * np_mask_rgb
    return np.clip(matched, 0.0, 1.0)


def _grown_sides(init_img, left, right, up, down):
    target_w = math.ceil((init_img.width + left + right) / 64) * 64
    target_h = math.ceil((init_img.height + up + down) / 64) * 64
    if left > 0:
        left = left * (target_w - init_img.width) // (left + right)
    if right > 0:
        right = target_w - init_img.width - left
    if up > 0:
        up = up * (target_h - init_img.height) // (up + down)
    if down > 0:
        down = target_h - init_img.height - up
    return left, right, up, down


class Script(scripts.Script):
    def title(self):
        return "Outpainting mk2"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        if not is_img2img:
            return None
        info = gr.HTML("<p style=\"margin-bottom:0.75em\">Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8</p>")
        pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128, elem_id=self.elem_id("pixels"))
        mask_blur = gr.Slider(label='Mask blur', minimum=0, maximum=64, step=1, value=8, elem_id=self.elem_id("mask_blur"))
        direction = gr.CheckboxGroup(label="Outpainting direction", choices=['left', 'right', 'up', 'down'], value=['left', 'right', 'up', 'down'], elem_id=self.elem_id("direction"))
        noise_q = gr.Slider(label="Fall-off exponent (lower=higher detail)", minimum=0.0, maximum=4.0, step=0.01, value=1.0, elem_id=self.elem_id("noise_q"))
        color_variation = gr.Slider(label="Color variation", minimum=0.0, maximum=1.0, step=0.01, value=0.05, elem_id=self.elem_id("color_variation"))
        return [info, pixels, mask_blur, direction, noise_q, color_variation]

    def run(self, p, _, pixels, mask_blur, direction, noise_q, color_variation):
        seed_and_info = [None, None]
        process_width, process_height = p.width, p.height
        p.inpaint_full_res = False
        p.inpainting_fill = 1
        p.do_not_save_samples = p.do_not_save_grid = True

        asked = {side: (pixels if side in direction else 0) for side in ("left", "right", "up", "down")}
        blur_x = mask_blur if asked["left"] > 0 or asked["right"] > 0 else 0
        blur_y = mask_blur if asked["up"] > 0 or asked["down"] > 0 else 0
        p.mask_blur_x, p.mask_blur_y = blur_x * 4, blur_y * 4

        init_img = p.init_images[0]
        left, right, up, down = _grown_sides(init_img, asked["left"], asked["right"], asked["up"], asked["down"])

        def expand(init, count, grow, is_left=False, is_right=False, is_top=False, is_bottom=False):
            horizontal, vertical = is_left or is_right, is_top or is_bottom
            grow_x, grow_y = (grow if horizontal else 0), (grow if vertical else 0)
            strips, outputs = [], []
            for n in range(count):
                res_w, res_h = init[n].width + grow_x, init[n].height + grow_y
                canvas_size = (math.ceil(res_w / 64) * 64, math.ceil(res_h / 64) * 64)
                img = Image.new("RGB", canvas_size)
                img.paste(init[n], (grow_x if is_left else 0, grow_y if is_top else 0))
                mask = Image.new("RGB", canvas_size, "white")
                ImageDraw.Draw(mask).rectangle((
                    grow + blur_x if is_left else 0,
                    grow + blur_y if is_top else 0,
                    mask.width - grow - blur_x if is_right else res_w,
                    mask.height - grow - blur_y if is_bottom else res_h,
                ), fill="black")
                noised = get_matched_noise(np.asarray(img) / 255.0, np.asarray(mask) / 255.0, noise_q, color_variation)
                outputs.append(Image.fromarray(np.clip(noised * 255., 0., 255.).astype(np.uint8), mode="RGB"))

                strip_w = min(process_width, init[n].width + grow_x) if horizontal else img.width
                strip_h = min(process_height, init[n].height + grow_y) if vertical else img.height
                p.width, p.height = strip_w, strip_h
                out = outputs[n]
                crop = (0 if is_left else out.width - strip_w, 0 if is_top else out.height - strip_h,
                        strip_w if is_left else out.width, strip_h if is_top else out.height)
                mask = mask.crop(crop)
                p.image_mask = mask  # per image: the last one is what process_images gets
                strips.append(out.crop(crop))

            p.init_images = strips
            latent_mask = Image.new("RGB", (p.width, p.height), "white")
            ImageDraw.Draw(latent_mask).rectangle((
                grow + blur_x * 2 if is_left else 0,
                grow + blur_y * 2 if is_top else 0,
                mask.width - grow - blur_x * 2 if is_right else res_w,
                mask.height - grow - blur_y * 2 if is_bottom else res_h,
            ), fill="black")
            p.latent_mask = latent_mask

            proc = process_images(p)
            if seed_and_info[0] is None:
                seed_and_info[:] = [proc.seed, proc.info]
            for n in range(count):
                made = proc.images[n]
                outputs[n].paste(made, (0 if is_left else outputs[n].width - made.width, 0 if is_top else outputs[n].height - made.height))
                outputs[n] = outputs[n].crop((0, 0, res_w, res_h))
            return outputs

        batch_count, batch_size = p.n_iter, p.batch_size
        p.n_iter = 1
        state.job_count = batch_count * sum(1 for grow in (left, right, up, down) if grow > 0)
        processed_images = []
        for i in range(batch_count):
            imgs = [init_img] * batch_size
            state.job = f"Batch {i + 1} out of {batch_count}"
            if left > 0:
                imgs = expand(imgs, batch_size, left, is_left=True)
            if right > 0:
                imgs = expand(imgs, batch_size, right, is_right=True)
            if up > 0:
                imgs = expand(imgs, batch_size, up, is_top=True)
            if down > 0:
                imgs = expand(imgs, batch_size, down, is_bottom=True)
            processed_images += imgs

        all_images = processed_images
        grid_wanted = not (len(processed_images) < 2 and opts.grid_only_if_multiple)
        if opts.return_grid and grid_wanted:
            all_images = [images.image_grid(processed_images)] + processed_images
        return Processed(p, all_images, seed_and_info[0], seed_and_info[1])

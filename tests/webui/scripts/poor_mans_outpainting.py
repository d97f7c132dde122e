"""Stand-in for A1111's scripts/poor_mans_outpainting.py ("Poor man's outpainting", img2img only), loaded like the
other root scripts (module name "poor_mans_outpainting.py").

Kept: the title, the four controls and their defaults, and run(): p.mask_blur = 2 x the blur slider,
p.inpainting_fill from the radio, p.inpaint_full_res = False; the canvas is the init image grown by `pixels` on
the chosen sides and rounded up to a multiple of 64 (the growth split between opposite sides), with a white
(inpaint) mask except a black rectangle over the original image inset by 2 x blur on grown sides, and a latent
mask inset by blur // 2. Canvas and masks are cut with images.split_grid (p.width x p.height tiles, overlap =
pixels); every tile that is not entirely inside the original image is one process_images(p) call with
batch_size = n_iter = 1, p.init_images = [tile], p.image_mask = its mask tile, p.latent_mask = its latent mask
tile, and p.seed = processed.seed + 1 afterwards. The results are combined into one image.
"""
import math

import gradio as gr
from PIL import Image, ImageDraw

import modules.scripts as scripts
from modules import devices, images
from modules.processing import Processed, process_images
from modules.shared import opts, state


def grown_sides(init_img, left, right, up, down):
    """(target_w, target_h, left, right, up, down): the canvas rounded up to multiples of 64, with the extra
    pixels shared between the grown sides in proportion to what was asked (the far side takes the remainder)."""
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
    return target_w, target_h, left, right, up, down


def _inset_mask(size, left, right, up, down, inset):
    """White (inpaint) everywhere but a black box over the original image, pulled in by `inset` on grown sides."""
    mask = Image.new("L", size, "white")
    width, height = size
    ImageDraw.Draw(mask).rectangle((
        left + (inset if left > 0 else 0),
        up + (inset if up > 0 else 0),
        width - right - (inset if right > 0 else 0),
        height - down - (inset if down > 0 else 0),
    ), fill="black")
    return mask


class Script(scripts.Script):
    def title(self):
        return "Poor man's outpainting"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        if not is_img2img:
            return None
        pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128, elem_id=self.elem_id("pixels"))
        mask_blur = gr.Slider(label='Mask blur', minimum=0, maximum=64, step=1, value=4, elem_id=self.elem_id("mask_blur"))
        inpainting_fill = gr.Radio(label='Masked content', choices=['fill', 'original', 'latent noise', 'latent nothing'], value='fill', type="index", elem_id=self.elem_id("inpainting_fill"))
        direction = gr.CheckboxGroup(label="Outpainting direction", choices=['left', 'right', 'up', 'down'], value=['left', 'right', 'up', 'down'], elem_id=self.elem_id("direction"))
        return [pixels, mask_blur, inpainting_fill, direction]

    def run(self, p, pixels, mask_blur, inpainting_fill, direction):
        p.mask_blur = mask_blur * 2
        p.inpainting_fill = inpainting_fill
        p.inpaint_full_res = False

        init_img = p.init_images[0]
        asked = [pixels if side in direction else 0 for side in ("left", "right", "up", "down")]
        target_w, target_h, left, right, up, down = grown_sides(init_img, *asked)

        img = Image.new("RGB", (target_w, target_h))
        img.paste(init_img, (left, up))
        mask = _inset_mask(img.size, left, right, up, down, mask_blur * 2)
        latent_mask = _inset_mask(img.size, left, right, up, down, mask_blur // 2)
        devices.torch_gc()

        grid = images.split_grid(img, tile_w=p.width, tile_h=p.height, overlap=pixels)
        grid_mask = images.split_grid(mask, tile_w=p.width, tile_h=p.height, overlap=pixels)
        grid_latent_mask = images.split_grid(latent_mask, tile_w=p.width, tile_h=p.height, overlap=pixels)

        p.n_iter = p.batch_size = 1
        p.do_not_save_grid = p.do_not_save_samples = True

        def inside_original(x, w, y, h):
            return x >= left and x + w <= img.width - right and y >= up and y + h <= img.height - down

        work = []  # (tile, mask tile, latent mask tile) of every tile that touches the grown border
        for (y, h, row), (_, _, row_mask), (_, _, row_latent) in zip(grid.tiles, grid_mask.tiles, grid_latent_mask.tiles):
            for tile, tile_mask, tile_latent in zip(row, row_mask, row_latent):
                x, w = tile[0:2]
                if not inside_original(x, w, y, h):
                    work.append((tile[2], tile_mask[2], tile_latent[2]))

        state.job_count = len(work)
        initial_seed = initial_info = None
        work_results = []
        for i, (tile, tile_mask, tile_latent) in enumerate(work):
            p.init_images = [tile]
            p.image_mask = tile_mask
            p.latent_mask = tile_latent
            state.job = f"Batch {i + 1} out of {len(work)}"
            processed = process_images(p)
            if initial_seed is None:
                initial_seed, initial_info = processed.seed, processed.info
            p.seed = processed.seed + 1
            work_results += processed.images

        index = 0
        for y, h, row in grid.tiles:
            for tile in row:
                x, w = tile[0:2]
                if inside_original(x, w, y, h):
                    continue
                tile[2] = work_results[index] if index < len(work_results) else Image.new("RGB", (p.width, p.height))
                index += 1
        combined = images.combine_grid(grid)
        if opts.samples_save:
            images.save_image(combined, p.outpath_samples, "", initial_seed, p.prompt, opts.samples_format, info=initial_info, p=p)
        return Processed(p, [combined], initial_seed, initial_info)

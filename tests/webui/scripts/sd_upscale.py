"""Stand-in for A1111's scripts/sd_upscale.py ("SD upscale", img2img only), loaded like the other root scripts
(module name "sd_upscale.py").

Kept: the title and the controls in A1111's order (an HTML note, "Tile overlap", "Upscaler" as a type="index" Radio
over shared.sd_upscalers, "Scale Factor"; the API may name the upscaler instead of its index), and run(): fix_seed,
"SD upscale overlap"/"SD upscale upscaler" infotext entries, the first init image flattened and enlarged by the
upscaler ("None": unchanged), cut with images.split_grid into p.width x p.height tiles (p.width/height unchanged),
then for each of the original n_iter passes (seed = initial seed + pass) the tiles in batches of the original
batch_size: every call sets p.batch_size and p.init_images = that batch of *different* tiles (the last batch may
be shorter; init() then lowers p.batch_size) and p.seed = processed.seed + 1 afterwards; p.n_iter = 1,
do_not_save_grid/samples, p.image_mask untouched. The results go back with images.combine_grid (a missing result
tile is black); the job returns one combined image per pass.
"""
import math

import gradio as gr
from PIL import Image

import modules.scripts as scripts
from modules import devices, images, processing, shared
from modules.processing import Processed
from modules.shared import opts, state


class Script(scripts.Script):
    def title(self):
        return "SD upscale"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        info = gr.HTML("<p style=\"margin-bottom:0.75em\">Will upscale the image by the selected scale factor; use width and height sliders to set tile size</p>")
        overlap = gr.Slider(minimum=0, maximum=256, step=16, label='Tile overlap', value=64, elem_id=self.elem_id("overlap"))
        scale_factor = gr.Slider(minimum=1.0, maximum=4.0, step=0.05, label='Scale Factor', value=2.0, elem_id=self.elem_id("scale_factor"))
        names = [upscaler.name for upscaler in shared.sd_upscalers]
        upscaler_index = gr.Radio(label='Upscaler', choices=names, value=names[0], type="index", elem_id=self.elem_id("upscaler_index"))
        return [info, overlap, upscaler_index, scale_factor]

    def run(self, p, _, overlap, upscaler_index, scale_factor):
        if isinstance(upscaler_index, str):  # the API may send the name
            upscaler_index = [x.name.lower() for x in shared.sd_upscalers].index(upscaler_index.lower())
        processing.fix_seed(p)
        upscaler = shared.sd_upscalers[upscaler_index]
        p.extra_generation_params["SD upscale overlap"] = overlap
        p.extra_generation_params["SD upscale upscaler"] = upscaler.name

        init_img = images.flatten(p.init_images[0], opts.img2img_background_color)
        img = init_img if upscaler.name == "None" else upscaler.scaler.upscale(init_img, scale_factor, upscaler.data_path)
        devices.torch_gc()

        grid = images.split_grid(img, tile_w=p.width, tile_h=p.height, overlap=overlap)
        batch_size, upscale_count, seed = p.batch_size, p.n_iter, p.seed
        p.n_iter = 1
        p.do_not_save_grid = p.do_not_save_samples = True

        work = [tile[2] for _y, _h, row in grid.tiles for tile in row]
        batch_count = math.ceil(len(work) / batch_size)
        state.job_count = batch_count * upscale_count

        initial_info = None
        result_images = []
        for n in range(upscale_count):
            p.seed = start_seed = seed + n
            work_results = []
            for i in range(batch_count):
                p.batch_size = batch_size
                p.init_images = work[i * batch_size:(i + 1) * batch_size]
                state.job = f"Batch {i + 1 + n * batch_count} out of {state.job_count}"
                processed = processing.process_images(p)
                if initial_info is None:
                    initial_info = processed.info
                p.seed = processed.seed + 1
                work_results += processed.images

            index = 0
            for _y, _h, row in grid.tiles:
                for tile in row:
                    tile[2] = work_results[index] if index < len(work_results) else Image.new("RGB", (p.width, p.height))
                    index += 1
            combined = images.combine_grid(grid)
            result_images.append(combined)
            if opts.samples_save:
                images.save_image(combined, p.outpath_samples, "", start_seed, p.prompt, opts.samples_format, info=initial_info, p=p)

        return Processed(p, result_images, seed, initial_info)

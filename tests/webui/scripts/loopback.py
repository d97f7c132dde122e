"""Stand-in for A1111's scripts/loopback.py ("Loopback", img2img only), loaded like the other root scripts (module
name "loopback.py").

Kept: the title, the four controls and their defaults (the UI/API argument list), and run(): fix_seed once,
p.extra_generation_params *replaced* by the script's two entries, batch_size = n_iter = 1, then for each of the
original n_iter batches `loops` calls of process_images(p) on the same p: the first call of a batch starts from the
original init images and denoising strength; after each call p.seed = processed.seed + 1, p.denoising_strength
follows the curve towards the final strength, p.init_images = [the image just made] and p.inpainting_fill = 1
("original"; p.image_mask is left alone), restored at the end of the batch. Result: a one-row grid of the history
(if more than one image and opts.return_grid) followed by the images. Interrogation (CLIP/DeepBooru) and colour
correction are not modelled (the former raises).
"""
import math

import gradio as gr

import modules.scripts as scripts
from modules import images, processing
from modules.processing import Processed
from modules.shared import opts, state


def _curve_progress(curve, progress):
    """0..1 along the loops -> 0..1 of the way from the initial to the final denoising strength."""
    if curve == "Aggressive":
        return math.sin(progress * math.pi * 0.5)
    if curve == "Lazy":
        return 1 - math.cos(progress * math.pi * 0.5)
    return progress  # "Linear"


class Script(scripts.Script):
    def title(self):
        return "Loopback"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        loops = gr.Slider(minimum=1, maximum=32, step=1, label='Loops', value=4, elem_id=self.elem_id("loops"))
        final_denoising_strength = gr.Slider(minimum=0, maximum=1, step=0.01, label='Final denoising strength', value=0.5, elem_id=self.elem_id("final_denoising_strength"))
        denoising_curve = gr.Dropdown(label="Denoising strength curve", choices=["Aggressive", "Linear", "Lazy"], value="Linear")
        append_interrogation = gr.Dropdown(label="Append interrogated prompt at each iteration", choices=["None", "CLIP", "DeepBooru"], value="None")
        return [loops, final_denoising_strength, denoising_curve, append_interrogation]

    def run(self, p, loops, final_denoising_strength, denoising_curve, append_interrogation):
        if append_interrogation != "None":
            raise NotImplementedError("interrogation is not modelled by the stand-in")
        processing.fix_seed(p)
        batch_count = p.n_iter
        p.extra_generation_params = {"Final denoising strength": final_denoising_strength, "Denoising curve": denoising_curve}
        p.batch_size = p.n_iter = 1

        initial_denoising_strength = p.denoising_strength
        original_init_images, original_inpainting_fill = p.init_images, p.inpainting_fill
        initial_color_corrections = [processing.setup_color_correction(p.init_images[0])]
        state.job_count = loops * batch_count

        def strength_after(loop):
            if loops == 1:
                return initial_denoising_strength
            share = _curve_progress(denoising_curve, loop / (loops - 1))
            return initial_denoising_strength + (final_denoising_strength - initial_denoising_strength) * share

        initial_seed = initial_info = None
        history, all_images = [], []
        for n in range(batch_count):
            p.init_images, p.denoising_strength = original_init_images, initial_denoising_strength
            last_image = None
            for i in range(loops):
                p.n_iter = p.batch_size = 1
                p.do_not_save_grid = True
                if opts.img2img_color_correction:
                    p.color_corrections = initial_color_corrections
                state.job = f"Iteration {i + 1}/{loops}, batch {n + 1}/{batch_count}"

                processed = processing.process_images(p)
                if state.interrupted or state.stopping_generation:
                    break
                if initial_seed is None:
                    initial_seed, initial_info = processed.seed, processed.info
                p.seed = processed.seed + 1
                p.denoising_strength = strength_after(i + 1)
                if state.skipped:
                    break

                last_image = processed.images[0]
                p.init_images = [last_image]
                p.inpainting_fill = 1  # "original" for the following loops
                if batch_count == 1:
                    history.append(last_image)
                    all_images.append(last_image)

            if batch_count > 1 and not state.skipped and not state.interrupted:
                history.append(last_image)
                all_images.append(last_image)
            p.inpainting_fill = original_inpainting_fill
            if state.interrupted or state.stopping_generation:
                break

        grids = []
        if len(history) > 1:
            grid = images.image_grid(history, rows=1)
            if opts.grid_save:
                images.save_image(grid, p.outpath_grids, "grid", initial_seed, p.prompt, opts.grid_format, info=None, grid=True, p=p)
            if opts.return_grid:
                grids.append(grid)
        return Processed(p, grids + all_images, initial_seed, initial_info)

"""The bad-input table: what each bad input gets, what to do, and the tests that show it. README's troubleshooting
section is rendered from these rows (`python -m tests.troubleshooting` rewrites it; tests/test_docs.py checks it)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- troubleshooting:start -->", "<!-- troubleshooting:end -->"


@dataclass(frozen=True)
class Row:
    problem: str
    answer: str  # what the user sees
    fix: str
    tests: tuple[str, ...]  # "module::function" in tests/


ROWS = (
    Row("No face in the face (or pose) photo",
        "The job stops with *No face found in the face image* (or *pose image*, *init image*; in the img2img Batch "
        "tab: which image); API: 422.",
        "Use a clearer, larger, frontal, well-lit photo, or crop closer. *Preview detected face* or "
        "`python -m lib_instantid.doctor --face photo.jpg` shows what is detected.",
        ("test_reliability::test_no_face_stops_the_job_with_a_message_and_the_next_job_works",)),
    Row("Several faces in a photo",
        "The largest is used (or the one at *Face index*); the infotext says which, e.g. `Face: #2 by size of 3`. "
        "An index beyond the faces found is refused with the number found.",
        "Set *Face index* (0 = largest). In inpainting the face under the mask is used for the pose.",
        ("test_reliability::test_several_faces_largest_or_chosen_and_recorded",
         "test_extension::test_inpaint_chooses_the_face_under_the_mask")),
    Row("Tiny face, extreme aspect ratio, 1×1 image, huge image",
        "Analysed when a face can be found (images over 4096 px are downscaled for detection); otherwise the "
        "no-face message. Images over 100 megapixels are refused with their size.",
        "Send a photo where the face is at least ~64 px wide.",
        ("test_reliability::test_odd_image_sizes",)),
    Row("RGBA, grayscale, palette, 16-bit, CMYK, EXIF-rotated photos",
        "Handled: converted to 8-bit colour, transparency shown on black, rotation applied.",
        "—",
        ("test_reliability::test_image_formats_through_the_api", "test_face::test_exif_rotation_is_applied_before_analysis")),
    Row("Corrupt or truncated base64, not an image, empty string",
        "API: 422 naming the field (`face_image is not valid base64…`, `…is not a readable image…`, "
        "`…is empty`); nothing else changes.",
        "Send the file's bytes as base64; a `data:image/png;base64,` prefix is fine.",
        ("test_reliability::test_unreadable_images_are_refused_naming_the_field",)),
    Row("Unknown field, wrong type, weight out of range, start after end",
        "API: 422 naming the field and the allowed values, e.g. `adapter_weight is 3, outside the allowed range "
        "0 to 2`.",
        "See the field table above.",
        ("test_args::test_bad_values_are_refused_naming_the_field",
         "test_extension::test_api_refuses_bad_arguments_with_the_field_and_keeps_serving",
         "test_args::test_random_api_dicts_give_settings_or_our_clear_error")),
    Row("A model name with `..`, an absolute path, or not installed",
        "Refused: `no installed face adapter is named …` with the installed names; no file outside the model "
        "folders is opened.",
        "Use a name from the dropdown or `GET /instantid/models`, or leave it empty (automatic).",
        ("test_catalog::test_names_outside_the_catalogue_are_refused_without_touching_files",)),
    Row("Wrong weights: an ordinary ControlNet, another kind of IP-Adapter, SD1.5 InstantID on SDXL, a truncated "
        "file",
        "Refused before sampling, saying what the file is and what was expected (e.g. `…is an IP-Adapter of "
        "another kind…`, `…made for SD1.5 … but the loaded checkpoint is SDXL…`, `…truncated or corrupt…`). A "
        "ControlNet that is not InstantID's is not listed at all, so naming it is refused.",
        "Use the files models.md lists, for the checkpoint's family.",
        ("test_reliability::test_wrong_weights_are_refused_before_sampling",
         "test_loading::test_other_ip_adapters_are_refused_by_kind",
         "test_loading::test_truncated_files_are_refused")),
    Row("A weights file that cannot be read (cut-off download, an HTML error page saved as `.bin`, a file system "
        "without memory mapping, an old torch)",
        "Listed in the dropdown as *unusable*, in `GET /instantid/models` and by the doctor with the reason (e.g. "
        "`…a zip archive without its directory, as a cut-off download leaves it…`); choosing it gives that reason. "
        "A readable file is read without memory mapping where mapping fails.",
        "Download the file again.",
        ("test_catalog::test_an_unreadable_file_is_listed_with_the_real_reason",
         "test_catalog::test_a_pickle_that_cannot_be_memory_mapped_is_read_whole",
         "test_doctor::test_cut_off_damaged_and_wrong_files_are_problems_with_the_reason")),
    Row("The same model twice (`models/instantid/` and `models/ControlNet/`), or models for several families",
        "*Automatic* takes the first one that fits the loaded checkpoint's shapes, `models/instantid/` first, and "
        "the infotext records which. The dropdowns show each model's family and mark those that do not fit.",
        "Pick another one by name in the dropdown to override.",
        ("test_catalog::test_the_same_model_twice_is_chosen_deterministically_ours_first",
         "test_catalog::test_fitting_means_the_unets_shapes_not_only_its_family",
         "test_panel_and_routes::test_dropdowns_name_each_models_family_and_mark_what_does_not_fit")),
    Row("A `.bin` that carries code",
        "Never executed (weights-only loading); refused as *not a plain weights file*.",
        "Use the official file or a `.safetensors` version.",
        ("test_reliability::test_a_pickle_carrying_code_is_refused_and_never_run",
         "test_loading::test_pickle_carrying_code_is_never_executed")),
    Row("antelopev2 missing, nested in `antelopev2/antelopev2/`, or partial",
        "Nested is found. Missing or partial: the job stops with the folders searched, the files missing, and a "
        "pointer to models.md.",
        "Put `scrfd_10g_bnkps.onnx` and `glintr100.onnx` in `models/insightface/models/antelopev2/`.",
        ("test_reliability::test_face_models_missing_or_partial_name_the_folders",
         "test_face::test_pack_folder_is_found_flat_or_nested")),
    Row("onnxruntime-gpu installed but CUDA unusable",
        "Face analysis falls back to the CPU with one warning in the console.",
        "Install the onnxruntime-gpu build for your CUDA, or ignore (analysis is fast on the CPU).",
        ("test_face::test_cuda_listed_but_unusable_falls_back_to_cpu_with_one_warning",)),
    Row("Out of memory or another error during sampling; Interrupt; Skip",
        "InstantID's hooks are removed in every case; the next job is unaffected (with InstantID off it is "
        "bit-identical to a run that never used it).",
        "—",
        ("test_extension::test_an_exception_during_sampling_removes_the_hooks",
         "test_extension::test_an_interrupt_ends_the_job_cleanly", "test_reliability::test_skip_ends_cleanly",
         "test_reliability::test_soak_of_mixed_jobs_leaves_nothing_behind")),
    Row("img2img Batch tab, Loopback, SD upscale, outpainting scripts",
        "Every image gets InstantID with the pose of its own init image. SD upscale's (and poor man's "
        "outpainting's) tiles without a face are left exactly as without InstantID; the infotext counts them.",
        "—",
        ("test_repeated_jobs::test_batch_tab_follows_each_image_pose",
         "test_repeated_jobs::test_loopback_gives_every_loop_instantid_from_its_own_init_image",
         "test_repeated_jobs::test_sd_upscale_serves_the_tile_with_the_face_and_leaves_the_others")),
    Row("A refiner or a hires-fix checkpoint",
        "InstantID follows the swap: on a checkpoint with fitting models it acts there too; otherwise that part "
        "runs without it and the infotext says `Refiner: without InstantID (no fitting models)`.",
        "Install InstantID models for the refiner's family, or accept the plain refiner steps.",
        ("test_samplers_and_swaps::test_a_refiner_of_the_same_architecture_gets_instantid_too",
         "test_samplers_and_swaps::test_a_refiner_no_model_fits_runs_plain_and_the_infotext_says_so",
         "test_samplers_and_swaps::test_api_refiner_with_or_without_a_switch_point")),
    Row("`--medvram`, `--medvram-sdxl`, `--lowvram`",
        "The IdentityNet is on the GPU only while it computes, never during the VAE or the upscaler; the face "
        "adapter's weights stay on the CPU (only its per-layer keys/values go to the GPU). A job without InstantID "
        "sends InstantID's models to the CPU; a new checkpoint releases them.",
        "—",
        ("test_memory::test_low_vram_modes_have_the_identitynet_on_the_gpu_only_while_it_computes",
         "test_memory::test_a_job_without_instantid_sends_its_models_to_the_cpu_and_drops_tokens")),
    Row("DPM adaptive and samplers with more model calls than steps",
        "Start/end windows are fractions of the steps; the extra calls count as the end of sampling, so an end of "
        "1 lasts to the last call.",
        "—",
        ("test_samplers_and_swaps::test_with_end_1_the_identity_acts_until_sampling_ends",
         "test_samplers_and_swaps::test_a_window_ending_half_way_stops_half_way_and_never_comes_back")),
    Row("Kohya Hires.fix / Deep Shrink or another extension that rescales the UNet's feature maps",
        "The IdentityNet's residuals are resized to them (nearest neighbour, as sd-webui-controlnet does).",
        "—",
        ("test_samplers_and_swaps::test_residuals_follow_feature_maps_that_an_extension_rescales",)),
    Row("A replacement UNet (Settings → SD Unet, e.g. TensorRT)",
        "The job stops with *InstantID cannot act through the replacement UNet …*; API: 422.",
        "Set SD Unet to None for InstantID jobs.",
        ("test_samplers_and_swaps::test_a_replacement_unet_is_refused_in_the_panel_and_the_api",)),
    Row("`--api-auth` or `--gradio-auth`",
        "`/instantid/*` answer 401 without the API credentials (HTTP Basic) or a logged-in panel session; their "
        "answers name no server path.",
        "Send the credentials as for `/sdapi/v1/*`.",
        ("test_panel_and_routes::test_routes_need_the_api_credentials_when_the_webui_has_them",
         "test_panel_and_routes::test_routes_accept_a_logged_in_panel_when_the_ui_has_a_login",
         "test_panel_and_routes::test_routes_name_no_server_path")),
    Row("Two jobs back to back with different faces, models or checkpoints (SDXL → SD1.5)",
        "Nothing of the first job reaches the second.",
        "—",
        ("test_reliability::test_back_to_back_jobs_share_nothing",
         "test_extension::test_checkpoint_family_decides_the_automatic_models")),
)


def render() -> str:
    lines = [START, "", "| problem | what you get | what to do |", "|---|---|---|"]
    lines += [f"| {row.problem} | {row.answer} | {row.fix} |" for row in ROWS]
    return "\n".join(lines + ["", END])


def readme_with_table(readme: str) -> str:
    before, _, rest = readme.partition(START)
    _, _, after = rest.partition(END)
    return before + render() + after


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    README.write_text(readme_with_table(text), encoding="utf-8")
    sys.stdout.write("README troubleshooting section rewritten.\n")

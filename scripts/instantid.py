"""InstantID for the A1111 WebUI: the accordion, its arguments, and the calls into lib_instantid. Nothing else."""
from __future__ import annotations

import html
import json

import gradio as gr

from modules import infotext_utils, script_callbacks, scripts
from modules.ui_components import InputAccordion, ToolButton

from lib_instantid.args import AUTOMATIC, INFOTEXT_KEY, REGIONS, IdentityArgs, InstantIDArgs, specs
from lib_instantid.hosts import running_host, webui, webui_api, webui_xyz
from lib_instantid import pose_presets
from lib_instantid.images import decode_image, painted_mask, uploaded_photos
from lib_instantid.models import catalog

MODEL_KINDS = {"identitynet_model": catalog.IDENTITYNET, "adapter_model": catalog.ADAPTER}
host = running_host()  # lib_instantid.hosts.a1111 or .forge: how InstantID gets into this WebUI's UNet


def register(on_event, callback, name: str) -> None:
    try:
        on_event(callback, name=name)
    except TypeError:  # A1111 before 1.9 takes no callback names
        on_event(callback)


def paste_label(name: str) -> str:
    """The name a setting goes by when the WebUI carries it (Send to img2img, pasted infotext): "InstantID <key>"."""
    spec = dict((n, s) for n, s, _ in specs())[name]
    return f"{INFOTEXT_KEY} {spec.infotext or spec.label}"


def person_label(index: int, name: str) -> str:
    """The name a person slot's setting goes by in pasted infotext: "InstantID person 2 region"."""
    return f"{INFOTEXT_KEY} person {index + 1} {name}"


def expand_infotext(infotext: str, params: dict) -> None:
    """Registered for `on_infotext_pasted`: the settings recorded in the InstantID entry as their own keys, which the
    panel's fields read (each person's into their slot). Never the switch: pasted settings do not turn InstantID on
    (the photos are not in them)."""
    for name, value in InstantIDArgs.values_from_infotext(params).items():
        if name == "enabled" or value is None:
            continue
        if name == "identities":
            for i, person in enumerate(value[:PEOPLE]):
                for field, recorded in person.items():
                    if field in SLOT_FIELDS:
                        shown = AS_ABOVE if field == "pose" and recorded is None else recorded
                        params[person_label(i, field)] = ", ".join(map(str, shown)) if field == "region_box" \
                            else shown
            continue
        params[paste_label(name)] = webui.choice_for(MODEL_KINDS[name], value) if name in MODEL_KINDS else value


register(script_callbacks.on_cfg_denoiser, host.on_cfg_denoiser, "instantid_rows")
register(script_callbacks.on_model_loaded, host.on_model_loaded, "instantid_release")
register(script_callbacks.on_infotext_pasted, expand_infotext, "instantid_paste")
register(script_callbacks.on_app_started, webui_api.add_routes, "instantid_api")
register(script_callbacks.on_before_ui, webui_xyz.add_axes, "instantid_xyz")
register(script_callbacks.on_script_unloaded, webui.release_all, "instantid_unload")


LEAD = ("Drop a clear photo of the person's face, write the prompt, generate. *Preview detected face* shows what "
        "the face analysis found; the two weights say how much of the face and its pose to keep.")
# (IdentityNet weight, adapter weight), after the official tuning advice: raise both for likeness; for more
# stylisation (or when the image looks over-saturated) lower the adapter first, then the IdentityNet.
STYLES = {"Faithful": (1.0, 1.0), "Balanced": (0.8, 0.8), "Stylised": (0.6, 0.5)}


def style_weights(name: str):
    """A style preset button's handler: it sets the two weights."""
    identitynet, adapter = STYLES[name]
    return lambda: (gr.update(value=identitynet), gr.update(value=adapter))


GRADIO_4 = int(gr.__version__.split(".")[0]) >= 4  # Forge; A1111 runs gradio 3
MASK_CANVAS = (512, 512)  # stretched to each image, as a mask given through the API is


def mask_painter(label: str, elem_id: str):
    """A blank canvas to paint a region on with a brush; the script receives the painting as a mask (painted_mask)."""
    if GRADIO_4:
        painter = gr.ImageEditor(label=label, type="pil", sources=(), transforms=(), layers=False,
                                 canvas_size=MASK_CANVAS, brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                 visible=False, elem_id=elem_id)
    else:  # the canvas paints black on white; inverted, the strokes are white on black
        painter = gr.Image(label=label, source="canvas", tool="sketch", type="pil", image_mode="L",
                           invert_colors=True, shape=MASK_CANVAS, brush_color="#000000", visible=False,
                           elem_id=elem_id)
    painter.preprocess = painted_mask(painter.preprocess)
    return painter


def range_kept(moved: str):
    """A path's start and end sliders act as one range: the end moved before the start takes the start along, and
    the other way round, so the panel cannot hold a start after its end."""
    if moved == "start":
        return lambda start, end: gr.update(value=max(start, end))  # the new end
    return lambda start, end: gr.update(value=min(start, end))  # the new start


def pose_fields(pose: str) -> tuple[dict, dict]:
    """The pose photo only for "photo"; the pose box only for a chosen head pose."""
    return gr.update(visible=pose == pose_presets.PHOTO), gr.update(visible=pose in pose_presets.YAW)


def face_thumbnails(files) -> tuple[dict, None, dict]:
    """The uploaded face photos as thumbnails, hidden while there are none; no thumbnail chosen for removal."""
    photos = [decode_image(f, "face_image") for f in files or []]
    return gr.update(value=photos, visible=bool(photos)), None, gr.update(visible=False)


def thumbnail_chosen(chosen: gr.SelectData) -> tuple[int, dict]:
    """A thumbnail clicked: the Remove button offers to take that photo out (the upload list's ✕ clears all)."""
    return chosen.index, gr.update(value=f"Remove photo {chosen.index + 1}", visible=True)


def photo_removed(files, index: int | None) -> dict:
    """The Remove button: the face photos without the chosen one (the thumbnails follow the photos' change)."""
    kept = [str(f) for i, f in enumerate(files or []) if i != index]
    return gr.update(value=kept or None)


def preview_faces(*args) -> tuple[dict, str]:
    """The Preview button: the detected faces, the gallery shown only when there is something in it."""
    shown, message = webui.preview(*args)
    return gr.update(value=shown, visible=bool(shown)), message


PEOPLE = 4  # the panel's person slots (the most the identities setting takes)
SLOT_FIELDS = ("face_image", "region", "region_box", "region_mask", "pose", "identitynet_weight", "adapter_weight")
AS_ABOVE = "as above"  # a person's pose left to the top-level one


def people_value(*slots) -> list[dict]:
    """The identities setting from the person slots (SLOT_FIELDS values, slot after slot): the slots with photos."""
    people = []
    for start in range(0, len(slots), len(SLOT_FIELDS)):
        person = dict(zip(SLOT_FIELDS, slots[start:start + len(SLOT_FIELDS)]))
        if person["face_image"]:
            person["pose"] = None if person["pose"] == AS_ABOVE else person["pose"]
            people.append(person)
    return people


def region_fields(region: str) -> tuple[dict, dict]:
    """A person's region box only for "box", their mask only for "mask"."""
    return gr.update(visible=region == "box"), gr.update(visible=region == "mask")


def scores_under_panel(generation_info: str) -> dict:
    """After each generation (the output panel's generation info changed): the images' identity scores, read from
    their infotexts, under the panel; hidden when there are none."""
    info = json.loads(generation_info) if generation_info else {}
    infotexts = info.get("infotexts", [])[info.get("index_of_first_image", 0):]
    shown = webui.scores_shown([infotext_utils.parse_generation_parameters(text) for text in infotexts])
    return gr.update(value=shown, visible=bool(shown))


def download_missing(progress=gr.Progress()):
    """The Download button's handler; gradio feeds the progress bar through the `gr.Progress` default."""
    return webui.download_missing(progress)


class InstantIDScript(scripts.Script):
    def title(self) -> str:
        return "InstantID"

    def show(self, is_img2img: bool):
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        spec = {name: (s, default) for name, s, default in specs()}
        with InputAccordion(False, label="InstantID", elem_id=self.elem_id("enabled")) as enabled:
            gr.Markdown(LEAD, elem_id=self.elem_id("lead"))
            with gr.Row():
                face = gr.File(label=spec["face_image"][0].label, file_count="multiple", file_types=["image"],
                               elem_id=self.elem_id("face_image"))
                face.preprocess = uploaded_photos(face.preprocess)
                pose = gr.Image(label=spec["pose_image"][0].label, type="pil", elem_id=self.elem_id("pose_image"))
            thumbnails = gr.Gallery(label="Face photos", show_label=False, columns=6, height=120, visible=False,
                                    elem_id=self.elem_id("thumbnails"))
            chosen_photo = gr.State(None)
            remove_photo = gr.Button("Remove photo", size="sm", visible=False, elem_id=self.elem_id("remove_photo"))
            with gr.Row():
                head_pose = self._choice("pose", spec)
                pose_box = gr.Textbox(label=spec["pose_box"][0].label, value=", ".join(map(str, spec["pose_box"][1])),
                                      visible=False, elem_id=self.elem_id("pose_box"))
            sliders = {name: self._number(name, spec) for name in ("identitynet_weight", "adapter_weight")}
            with gr.Row():
                presets = {name: gr.Button(name, size="sm", elem_id=self.elem_id(f"style_{name.lower()}"))
                           for name in STYLES}
                preview_button = gr.Button("Preview detected face", elem_id=self.elem_id("preview"))
            preview = gr.Gallery(label="Detected faces", show_label=False, columns=4, height=200, visible=False,
                                 elem_id=self.elem_id("preview_gallery"))
            message = gr.Markdown()
            scores = gr.Markdown(visible=False, elem_id=self.elem_id("scores"))
            # The output panel is made after the scripts' UI: its generation info, once there, feeds the scores.
            self.on_after_component(
                lambda made: made.component.change(scores_under_panel, inputs=[made.component], outputs=[scores]),
                elem_id=f"generation_info_{'img2img' if is_img2img else 'txt2img'}")
            notice = webui.missing_notice()
            missing = gr.Markdown(notice, visible=bool(notice), elem_id=self.elem_id("missing"))
            download = gr.Button("Download missing models", visible=bool(notice), elem_id=self.elem_id("download"))
            with gr.Accordion("Advanced", open=False, elem_id=self.elem_id("advanced")):
                with gr.Row():
                    identitynet = self._model_dropdown("identitynet_model", spec)
                    adapter = self._model_dropdown("adapter_model", spec)
                    refresh = ToolButton("\U0001f504", elem_id=self.elem_id("refresh"))
                for pair in (("identitynet_start", "identitynet_end"), ("adapter_start", "adapter_end"),
                             ("face_index", "uncond_noise")):
                    with gr.Row():
                        sliders.update({name: self._number(name, spec) for name in pair})
                with gr.Row():
                    score = gr.Checkbox(value=spec["similarity"][1], label=spec["similarity"][0].label,
                                        elem_id=self.elem_id("similarity"))
                    region = self._choice("face_region", spec)
                region_mask = mask_painter(spec["face_region_mask"][0].label, self.elem_id("face_region_mask"))
            identities, slots = self._people(spec)
            gr.HTML(self._hints(spec))
        models = [identitynet, adapter, missing, download]
        # The panel is built while the WebUI still loads its checkpoint: turning InstantID on brings the dropdowns'
        # fit marks and the missing-models offer up to date with the checkpoint loaded by then.
        for event in (enabled.change, refresh.click, identitynet.focus, adapter.focus):
            event(webui.refreshed_choices, outputs=models)
        download.click(download_missing, outputs=models)
        face.change(face_thumbnails, inputs=[face], outputs=[thumbnails, chosen_photo, remove_photo])
        thumbnails.select(thumbnail_chosen, outputs=[chosen_photo, remove_photo])
        remove_photo.click(photo_removed, inputs=[face, chosen_photo], outputs=[face])
        head_pose.change(pose_fields, inputs=[head_pose], outputs=[pose, pose_box])
        region.change(lambda choice: gr.update(visible=choice == "mask"), inputs=[region], outputs=[region_mask])
        for path in ("identitynet", "adapter"):
            start, end = sliders[f"{path}_start"], sliders[f"{path}_end"]
            start.release(range_kept("start"), inputs=[start, end], outputs=[end])
            end.release(range_kept("end"), inputs=[start, end], outputs=[start])
        for name, button in presets.items():
            button.click(style_weights(name), outputs=[sliders["identitynet_weight"], sliders["adapter_weight"]])
        preview_button.click(preview_faces, inputs=[face, pose, sliders["face_index"], head_pose, pose_box],
                             outputs=[preview, message]).then(
            webui.download_offer, outputs=[missing, download])  # Preview may have found the face models missing
        components = {"enabled": enabled, "face_image": face, "pose_image": pose, "pose": head_pose,
                      "pose_box": pose_box, "identitynet_model": identitynet, "adapter_model": adapter, **sliders,
                      "similarity": score, "face_region": region, "face_region_mask": region_mask,
                      "identities": identities}
        # Every setting goes by a name of its own, which Send to img2img/inpaint matches and pasted infotext
        # (expanded by `expand_infotext`) fills; the identities through their slots.
        pasted = [(components[name], paste_label(name)) for name in spec if name != "identities"]
        pasted += [(component, person_label(i, name)) for (i, name), component in slots.items()
                   if name != "face_image" and name != "region_mask"]
        self.infotext_fields = pasted
        self.paste_field_names = [label for _, label in pasted]
        return [components[name] for name in spec]

    def _people(self, spec: dict) -> tuple[gr.State, dict]:
        """The several-people fold: a slot per person, gathered into the identities value on every change. Each
        field's label names its person: A1111 keeps UI defaults (ui-config.json) by tab and label, so slots sharing
        a label would all take the first one's value."""
        slots = {}
        person = {name: (s, default) for name, s, default in specs(IdentityArgs)}
        with gr.Accordion(spec["identities"][0].label, open=False, elem_id=self.elem_id("people")):
            gr.Markdown(spec["identities"][0].help)
            for i in range(PEOPLE):
                def field(name: str) -> dict:
                    return dict(label=f"Person {i + 1}: {person[name][0].label}",
                                elem_id=self.elem_id(f"person{i + 1}_{name}"))

                region_default = REGIONS[min(i, 2)]
                with gr.Row():
                    photos = gr.File(file_count="multiple", file_types=["image"], **field("face_image"))
                    photos.preprocess = uploaded_photos(photos.preprocess)
                    with gr.Column():
                        region = gr.Dropdown(choices=list(REGIONS), value=region_default, **field("region"))
                        box = gr.Textbox(value=", ".join(map(str, person["region_box"][1])),
                                         visible=region_default == "box", **field("region_box"))
                        pose = gr.Dropdown(choices=[AS_ABOVE, *pose_presets.POSES], value=AS_ABOVE, **field("pose"))
                    mask = mask_painter(**field("region_mask"))
                    with gr.Column():
                        weights = {name: gr.Slider(0.0, 2.0, value=spec[name][1], step=0.05, **field(name))
                                   for name in ("identitynet_weight", "adapter_weight")}
                region.change(region_fields, inputs=[region], outputs=[box, mask])
                slots.update({(i, "face_image"): photos, (i, "region"): region, (i, "region_box"): box,
                              (i, "region_mask"): mask, (i, "pose"): pose,
                              **{(i, name): slider for name, slider in weights.items()}})
        identities = gr.State([])
        ordered = [slots[(i, name)] for i in range(PEOPLE) for name in SLOT_FIELDS]
        for component in ordered:
            component.change(people_value, inputs=ordered, outputs=[identities])
        return identities, slots

    def _choice(self, name: str, spec: dict) -> gr.Dropdown:
        s, default = spec[name]
        return gr.Dropdown(label=s.label, choices=list(s.choices), value=default, elem_id=self.elem_id(name))

    def _hints(self, spec: dict) -> str:
        # Not on the enable switch: its id is the whole accordion's, so its title would cover the panel.
        hints = {self.elem_id(name): s.help for name, (s, _) in spec.items() if s.help and name != "enabled"}
        hints.update({self.elem_id(f"person{i + 1}_{name}"): s.help for name, s, _ in specs(IdentityArgs)
                      if s.help and name in SLOT_FIELDS for i in range(PEOPLE)})
        hints[self.elem_id("preview")] = "Run the face analysis and show the face box and keypoints that will be used."
        hints[self.elem_id("refresh")] = "Look for newly installed models."
        hints[self.elem_id("download")] = "Fetch the missing model files from Hugging Face (verified, resumable)."
        return f"<div hidden data-instantid-hints='{html.escape(json.dumps(hints), quote=True)}'></div>"

    def _model_dropdown(self, name: str, spec: dict) -> gr.Dropdown:
        s, _ = spec[name]
        return gr.Dropdown(label=s.label, choices=webui.model_choices(MODEL_KINDS[name]), value=AUTOMATIC,
                           elem_id=self.elem_id(name))

    def _number(self, name: str, spec: dict):
        s, default = spec[name]
        if s.kind is int:
            return gr.Number(value=default, precision=0, minimum=s.minimum, maximum=s.maximum, label=s.label,
                             elem_id=self.elem_id(name))
        return gr.Slider(s.minimum, s.maximum, value=default, step=0.05, label=s.label, elem_id=self.elem_id(name))

    def process(self, p, *args) -> None:
        host.start_job(p, args)

    def postprocess_image_after_composite(self, p, pp, *args) -> None:
        webui.score_image(p, pp.image)

    def postprocess(self, p, processed, *args) -> None:
        webui.scores_written(p)

    if hasattr(host, "before_every_sampling"):  # Forge: A1111 (1.9+) calls the hook too, but needs nothing there
        def process_before_every_sampling(self, p, *args, **kwargs) -> None:
            """Before each sampling pass (the hires pass too), after Forge reset its UNet patcher."""
            host.before_every_sampling(p, args)

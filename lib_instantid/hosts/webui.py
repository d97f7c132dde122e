"""What A1111 and Forge share: both run A1111's `modules` (shared, paths, processing, scripts), so where models and
face models are, the panel's model lists and Preview, a job's settings/identity/poses, the `p.sample` wrapper that
raises a job's kept error, and how errors are told, are the same on both. The UNet and how InstantID is injected
into it are each host's own (a1111.py, forge.py).

Errors found while preparing a job cannot be raised from the script hooks: both WebUIs catch and log those and
generate anyway, silently without the identity. They are kept and raised when sampling starts, from our wrapper of
`p.sample`, which ends the job with the message (the UI shows it; the API answers with it and its status code).
Scripts that process one `p` several times (img2img batch, Loopback, SD upscale, outpainting) run `process` again on
it: each run replaces the previous one's state, and the wrapper is installed once.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from modules import shared

from .. import downloads, pose_presets, similarity
from ..args import AUTOMATIC, INFOTEXT_KEY, InstantIDArgs, in_panel_words
from ..errors import InstantIDError
from ..face import FaceAnalyzer, choose_face, find_antelopev2, webui_antelopev2_roots
from ..models import catalog
from ..models.architecture import Architecture
from ..pipeline import CONDITIONING, MODEL_CACHE, Identity, Person, analyse_identity
from ..unet_hooks import unet_architecture
from . import people
from . import poses as posing


class InstantID(RuntimeError):
    """What a job with InstantID stops with in the panel: the WebUI shows the class name, then the message."""


# --- where things are --------------------------------------------------------------------------------------------

def models_path() -> Path:
    return Path(shared.models_path)


def installed_models() -> list[catalog.ModelEntry]:
    return catalog.scan(models_path())


def antelopev2_roots() -> list[Path]:
    from modules import paths

    extensions = Path(getattr(paths, "extensions_dir", Path(shared.script_path) / "extensions"))
    return webui_antelopev2_roots(models_path(), extensions, _controlnet_annotator_roots())


def _controlnet_annotator_roots() -> list[Path]:
    """Where sd-webui-controlnet keeps its downloads when its setting or command-line flag moved them."""
    from modules import paths

    moved = shared.opts.data.get("control_net_modules_path") or getattr(shared.cmd_opts,
                                                                        "controlnet_annotator_models_path", None)
    if not moved:
        return []
    folder = Path(moved)
    return [folder if folder.is_absolute() else Path(paths.data_path) / folder]


_analyzers: dict[Path, FaceAnalyzer] = {}
_analyzers_lock = threading.Lock()


def face_analyzer_pack() -> Path:
    return find_antelopev2(*antelopev2_roots())


def face_analyzer() -> FaceAnalyzer:
    pack = face_analyzer_pack()
    with _analyzers_lock:
        if pack not in _analyzers:
            _analyzers.clear()
            _analyzers[pack] = FaceAnalyzer(pack)
        return _analyzers[pack]


def unet_of_model(sd_model) -> torch.nn.Module | None:
    """The ldm/sgm-layout UNet of a loaded checkpoint: A1111's `model.diffusion_model`, or on Forge the one in its
    UNet patcher. None while no checkpoint is loaded."""
    forge_objects = getattr(sd_model, "forge_objects", None)
    if forge_objects is not None:
        return forge_objects.unet.model.diffusion_model
    return getattr(getattr(sd_model, "model", None), "diffusion_model", None)


def loaded_architecture() -> Architecture | None:
    """What the loaded checkpoint's UNet offers, or None while no checkpoint is loaded."""
    from modules import sd_models

    # Not `shared.sd_model`: in A1111 reading it while no checkpoint is loaded starts loading one (each time).
    unet = unet_of_model(sd_models.model_data.sd_model)
    return None if unet is None else unet_architecture(unet)


# --- a job's settings --------------------------------------------------------------------------------------------

class Settings:
    """One processing's settings, people (identity, weights, poses, region of each) and which images are served,
    read at `process`: what every host needs before it touches the UNet. Raises InstantIDError with a message for
    anything the user must fix."""

    def __init__(self, p, script_args: tuple) -> None:
        args = InstantIDArgs.from_script_args(script_args)
        overrides = getattr(p, "instantid_overrides", None)  # set by XYZ plot axes
        if overrides:
            args = args.with_overrides(**overrides)
        args.check_ready()
        self.args = args
        if args.identities:
            self.people = _several(args)
            self.served, self.per_image = (True,), False  # each person's pose is the same in every image
        else:
            identity = analyse_identity(face_analyzer(), args.face_image, args.face_index)
            poses = _poses(p, args, identity)
            keypoints = None if args.pose == pose_presets.NONE else poses.keypoints_for
            self.people = (Person(identity, args.face_index, args.adapter_weight, args.identitynet_weight, keypoints,
                                  _region(args, poses)),)
            self.served, self.per_image = poses.served, not poses.shared
        self.models = installed_models()
        unserved = self.served.count(False)
        self.notes = {"Images without a face": f"{unserved} of {len(self.served)} (left unchanged)"} \
            if unserved else {}


def _region(args: InstantIDArgs, poses: posing.Poses):
    """Where InstantID acts in each image (face_region), as a function of the canvas size and the image; None:
    everywhere."""
    if args.face_region == "face":
        return poses.region_for
    if args.face_region == "mask":
        return people.stretched(args.face_region_mask)
    return None


def _several(args: InstantIDArgs) -> tuple[Person, ...]:
    """Each of several people in their region, posed there by their pose photo, first face photo or chosen pose."""
    staged = []
    for i, person in enumerate(args.people()):
        whose = f"person {i + 1}'s "
        identity = analyse_identity(face_analyzer(), person.face_image, person.face_index, whose)
        pose_face = identity.first_face
        if person.pose_image is not None:
            pose_face = choose_face(face_analyzer().detect(person.pose_image), 0, f"{whose}pose image")
        fractions = people.region_fractions(person, i)
        pose = posing.Poses((people.placed_pose(person, fractions, pose_face, identity.first_face),))
        keypoints = None if person.pose == pose_presets.NONE else pose.keypoints_for
        staged.append(Person(identity, person.face_index, person.adapter_weight, person.identitynet_weight,
                             keypoints, people.region_source(person, i)))
    return tuple(staged)


def _poses(p, args: InstantIDArgs, identity: Identity) -> posing.Poses:
    if args.pose != pose_presets.PHOTO:  # a chosen head pose, the same for every image ("none": never drawn)
        pose = args.pose if args.pose in pose_presets.YAW else "front"
        return posing.Poses((posing.PresetPose(pose, args.pose_box, identity.first_face.keypoints),))
    pose_photo = None
    if args.pose_image is not None:
        pose_photo = choose_face(face_analyzer().detect(args.pose_image), 0, "pose image")
    if not hasattr(p, "init_images"):
        return posing.txt2img_poses(p, pose_photo or identity.first_face)
    return posing.img2img_poses(p, face_analyzer().detect, pose_photo, posing.face_under_mask(p))


class SampleScope:
    """Installed once as `p.sample`: runs the current processing's run (its `sample(original, args, kwargs)`)
    around the real `p.sample`."""

    def __init__(self, p) -> None:
        self.p = p
        self.original = p.sample
        self.run = None

    @classmethod
    def install(cls, p) -> "SampleScope":
        p.sample = scope = cls(p)
        return scope

    @classmethod
    def of(cls, p) -> "SampleScope | None":
        scope = p.__dict__.get("sample")
        if isinstance(scope, cls) and scope.p is not p:  # a copy of another job: start afresh on this one's own
            p.sample = type(p).sample.__get__(p)
            return None
        return scope if isinstance(scope, cls) else None

    @classmethod
    def set_run(cls, p, run) -> None:
        """This processing's run (None: InstantID is off for it), installing the wrapper the first time."""
        scope = cls.of(p)
        if scope is None and run is not None:
            scope = cls.install(p)
        if scope is not None:
            scope.run = run

    def __call__(self, *args, **kwargs):
        if self.run is None:
            return self.original(*args, **kwargs)
        return self.run.sample(self.original, args, kwargs)


class ActiveRun:
    """A host's run whose `p.sample` is running: the CFG denoiser callback reports to it (its `on_denoiser`), and a
    checkpoint loaded meanwhile (a refiner, a hires checkpoint) releases what was loaded for the old one only when
    the run ends."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.run = None
        self.release = release
        self.release_pending = False

    @contextlib.contextmanager
    def running(self, run):
        self.run = run
        try:
            yield
        finally:
            self.run = None
            if self.release_pending:
                self.release_pending = False
                self.release()

    def on_cfg_denoiser(self, params) -> None:
        """Registered for `on_cfg_denoiser`: every denoiser call of every job; only a running InstantID job listens."""
        if self.run is not None:
            self.run.on_denoiser(params)

    def on_model_loaded(self, sd_model) -> None:
        """Registered for `on_model_loaded`: a new checkpoint; what was loaded for the old one goes."""
        if self.run is not None:
            self.release_pending = True
        else:
            self.release()


SIMILARITY_KEY = f"{INFOTEXT_KEY} similarity"


class ImageScores:
    """A job's identity-score entry in `p.extra_generation_params`. The WebUI calls such an entry for every infotext
    it writes (with create_infotext's locals): each image's own infotext gets the score taken of that image, a grid's
    (a batch's or an XYZ plot's) none, since no score describes a grid."""

    def __init__(self) -> None:
        self.texts: dict[tuple[int, int], str] = {}  # by (batch number, index in the batch)

    def __call__(self, p, index: int, use_main_prompt: bool = False, **_) -> str | None:
        return None if use_main_prompt else self.texts.get((p.iteration, index))


def score_image(p, image) -> None:
    """The script's `postprocess_image_after_composite` hook, for every finished image: with the identity score on,
    how closely the image's best-matching face resembles the identity, recorded for this image's infotext (the
    WebUI writes it right after this hook)."""
    scope = SampleScope.of(p)
    run = None if scope is None else scope.run
    settings = getattr(run, "settings", None)
    if settings is None or run.error is not None or not settings.args.similarity:
        return
    faces = face_analyzer().detect(image)
    scores = [similarity.best_match(faces, person.identity.embedding) for person in settings.people]
    entry = p.extra_generation_params.get(SIMILARITY_KEY)
    if not isinstance(entry, ImageScores):
        entry = p.extra_generation_params[SIMILARITY_KEY] = ImageScores()
    entry.texts[(p.iteration, p.batch_index)] = ", ".join(similarity.described(score) for score in scores)


def scores_written(p) -> None:
    """The script's `postprocess` hook, once the job's infotexts are written: the entry goes. An XYZ plot shares one
    `extra_generation_params` between its cells and writes its grid's infotext from it afterwards."""
    p.extra_generation_params.pop(SIMILARITY_KEY, None)


def scores_shown(recorded: list[dict]) -> str:
    """Under the panel after a generation: the identity score each image's infotext records (`recorded`: each
    image's parsed infotext, in gallery order); "" when none has one (InstantID or the score was off)."""
    scores = [params.get(SIMILARITY_KEY) for params in recorded]
    if not any(scores):
        return ""
    if len(scores) == 1:
        shown = f"**{scores[0]}**"
    else:
        shown = " · ".join(f"image {i}: **{score or 'not scored'}**" for i, score in enumerate(scores, 1))
    return (f"Identity score: {shown} — how closely the best-matching face in the image resembles the face photos "
            "(cosine similarity of their face embeddings, one number per person; higher is closer).")


def for_host(p, error: InstantIDError) -> BaseException:
    """An API request's input error becomes an HTTPException: the API answers it with its status and message and,
    unlike other exceptions, does not print a traceback to the server console for it. In the panel the message is
    told in the panel's words."""
    if getattr(p, "is_api", False):
        from fastapi import HTTPException

        http = HTTPException(status_code=error.status_code, detail=f"{type(error).__name__}: {error}")
        http.__cause__ = error  # the original stays attached for logs
        return http
    return InstantID(in_panel_words(str(error)))


def release_all() -> None:
    """Registered for `on_script_unloaded`: models, tokens and face models go."""
    MODEL_CACHE.clear()
    CONDITIONING.clear()
    with _analyzers_lock:
        _analyzers.clear()


# --- the panel ---------------------------------------------------------------------------------------------------

def model_choices(kind: str) -> list[str]:
    unet = loaded_architecture()
    return [AUTOMATIC] + [catalog.choice_label(e, unet) for e in installed_models() if e.kind == kind]


def refreshed_choices() -> tuple[dict, dict, dict, dict]:
    """The two dropdowns' choices, and the offer of what is missing (its text and the Download button)."""
    import gradio as gr

    return (gr.update(choices=model_choices(catalog.IDENTITYNET)), gr.update(choices=model_choices(catalog.ADAPTER)),
            *download_offer())


def missing_downloads() -> list[downloads.Download]:
    """The published files the loaded checkpoint's family needs and the models folders lack (SDXL when no
    checkpoint is loaded)."""
    unet = loaded_architecture()
    context_dim = unet.context_dim if unet is not None else downloads.SDXL_CONTEXT
    return downloads.missing(models_path(), antelopev2_roots(), context_dim)


def missing_notice() -> str:
    """The panel's notice of what is missing, with the licences (shown before anything is fetched); empty when
    nothing is."""
    wanted = missing_downloads()
    if not wanted:
        return ""
    files = ", ".join(f"`{d.name}`" + (f" ({downloads.human_size(d.file.size)})" if d.file.size else "")
                      for d in wanted)
    return (f"**Missing:** {files}. *Download missing models* fetches them from Hugging Face "
            f"({downloads.human_size(downloads.total_size(wanted))}), or place them by hand as models.md says. "
            + " ".join(downloads.licences(wanted)))


def download_offer() -> tuple[dict, dict]:
    """Updates of the notice and of the Download button, which is visible only while something is missing."""
    import gradio as gr

    notice = missing_notice()
    return gr.update(value=notice, visible=bool(notice)), gr.update(visible=bool(notice))


def download_missing(progress=None) -> tuple[dict, dict, dict, dict]:
    """The panel's Download button: fetch what is missing with a progress bar (bytes, speed, time left), then the
    dropdowns and the offer as they now are. A second click while a download runs joins it instead of starting
    another. Fails with the download's message."""
    import gradio as gr

    label = downloads.ProgressLabel()

    def report(done: int, total: int, name: str) -> None:
        if progress is not None:  # the console has the download library's own bar
            progress(done / total if total else 1.0, desc=f"{name}: {label(done, total)}")

    try:
        downloads.download(missing_downloads(), report)
    except InstantIDError as e:
        raise gr.Error(in_panel_words(str(e))) from e
    return refreshed_choices()


def choice_for(kind: str, name: str) -> str:
    """The dropdown entry of an installed model named `name` (e.g. from pasted infotext); Automatic when none is."""
    unet = loaded_architecture()
    for entry in installed_models():
        if entry.kind == kind and entry.name == name:
            return catalog.choice_label(entry, unet)
    return AUTOMATIC


PREVIEW_SIZE = (1024, 1024)  # a chosen head pose's keypoint image, as drawn for a square generation


def preview(face_files, pose_image, face_index, pose=pose_presets.PHOTO, pose_box=pose_presets.DEFAULT_BOX
            ) -> tuple[list, str]:
    """The panel's Preview button: overlays of what was found (and, for a chosen head pose, the keypoint image
    that will be used), and what to do when nothing was."""
    from .. import preview as drawing
    from ..images import decode_image
    from ..keypoints import draw_keypoints

    try:
        analyzer = face_analyzer()
        images = [(decode_image(f, "face_image"), f"face photo {i + 1}") for i, f in enumerate(face_files or [])]
        if pose_image is not None and pose == pose_presets.PHOTO:
            images.append((decode_image(pose_image, "pose_image"), "pose photo"))
        if not images:
            return [], "Upload a face photo first."
        found = [drawing.detect(analyzer, image, int(face_index or 0), what) for image, what in images]
        shown, messages = [d.image for d in found], [d.message for d in found]
        if pose in pose_presets.YAW:
            box = InstantIDArgs.from_dict({"pose_box": pose_box}).pose_box
            first = found[0].faces[int(face_index or 0)].keypoints if found[0].faces else None
            shown.append(draw_keypoints(pose_presets.preset_keypoints(pose, box, PREVIEW_SIZE, first), PREVIEW_SIZE))
            messages.append(f"The keypoints of the {pose} pose, for a square image.")
    except InstantIDError as e:
        return [], in_panel_words(str(e))
    return shown, "\n\n".join(messages)

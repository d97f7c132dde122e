"""The extension's own API routes: what is installed, what the face analysis finds in a photo, and how closely an
image resembles a person.

They obey the WebUI's authentication: with `--api-auth` a request must carry those credentials (HTTP Basic, as the
WebUI's own API takes them), with `--gradio-auth` a logged-in panel session (its cookie) is accepted too. Their
answers name no path on the server, and one request's work is bounded (image size, one analysis at a time).
"""
from __future__ import annotations

import base64
import binascii
import io
import secrets
from pathlib import Path
from typing import List, Union

from fastapi import Depends, FastAPI, HTTPException, Request
from PIL import Image
from pydantic import BaseModel, Field

from modules import paths, shared

from .. import preview, similarity
from ..errors import InstantIDError
from ..face import average_embedding, choose_face, onnx_providers
from ..images import decode_image
from . import webui

MAX_IMAGE_CHARS = 30 * 2**20  # base64 characters of one photo sent to /instantid/detect
MAX_DETECT_PIXELS = 40_000_000
PREVIEW_SIDE = 1024  # the overlay sent back is at most this wide and high


class DetectRequest(BaseModel):
    image: str = Field(..., max_length=MAX_IMAGE_CHARS)
    face_index: int = Field(0, ge=0, le=99)


class SimilarityRequest(BaseModel):
    reference: Union[str, List[str]]  # one photo of the person or several (averaged, as face_image is)
    image: str = Field(..., max_length=MAX_IMAGE_CHARS)
    face_index: int = Field(0, ge=0, le=99)


def add_routes(demo, app: FastAPI) -> None:
    """Registered for `on_app_started`."""
    dependencies = _authentication(app)
    app.add_api_route("/instantid/models", models, methods=["GET"], dependencies=dependencies)
    app.add_api_route("/instantid/detect", detect, methods=["POST"], dependencies=dependencies)
    app.add_api_route("/instantid/similarity", similarity_of, methods=["POST"], dependencies=dependencies)


def _authentication(app: FastAPI) -> list:
    """A dependency that refuses requests without the WebUI's credentials, when it has any."""
    api_users = dict(entry.split(":", 1) for entry in (getattr(shared.cmd_opts, "api_auth", None) or "").split(",")
                     if ":" in entry)
    if not api_users and not getattr(app, "auth", None):
        return []

    def authenticate(request: Request) -> None:
        if _panel_session(app, request) or _api_credentials(api_users, request):
            return
        headers = {"WWW-Authenticate": "Basic"} if api_users else None
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers=headers)

    return [Depends(authenticate)]


def _panel_session(app: FastAPI, request: Request) -> bool:
    """A logged-in panel: gradio keeps its sessions in `app.tokens`, keyed by the access-token cookie."""
    tokens = getattr(app, "tokens", None) or {}
    return any(tokens.get(value) for name, value in request.cookies.items() if name.startswith("access-token"))


def _api_credentials(users: dict[str, str], request: Request) -> bool:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return user in users and secrets.compare_digest(password.encode(), users[user].encode())


def models() -> dict:
    unet = webui.loaded_architecture()
    return {
        "models": [
            {"name": e.name, "kind": e.kind, "family": e.family, "context_dim": e.context_dim,
             "fits_loaded_checkpoint": None if unet is None else e.fits(unet),
             "error": None if e.error is None else without_server_paths(e.error)}
            for e in webui.installed_models()
        ],
        "antelopev2": _antelopev2_status(),
    }


def _antelopev2_status() -> dict:
    try:
        pack = webui.face_analyzer_pack()
        return {"found": True, "folder": without_server_paths(str(pack)), "providers": onnx_providers(),
                "error": None}
    except InstantIDError as e:
        return {"found": False, "folder": None, "providers": [], "error": without_server_paths(str(e))}


def detect(request: DetectRequest) -> dict:
    try:
        found = preview.detect(webui.face_analyzer(), _photo(request.image, "image"), request.face_index)
    except InstantIDError as e:
        raise HTTPException(status_code=e.status_code, detail=without_server_paths(str(e))) from e
    return {
        "faces": [
            {"box": face.box.tolist(), "keypoints": face.keypoints.tolist(), "score": face.score}
            for face in found.faces
        ],
        "message": found.message,
        "preview": _png_base64(found.image),
    }


MAX_REFERENCES = 8


def similarity_of(request: SimilarityRequest) -> dict:
    """How closely the image's best-matching face resembles the person in the reference photo(s): the identity score
    a job records, for any image."""
    photos = [request.reference] if isinstance(request.reference, str) else request.reference
    try:
        if not 1 <= len(photos) <= MAX_REFERENCES:
            raise InstantIDError(f"reference: give 1 to {MAX_REFERENCES} photos, got {len(photos)}.",
                                 field="reference")
        analyzer = webui.face_analyzer()
        chosen = [choose_face(analyzer.detect(_photo(photo, "reference" if len(photos) == 1 else f"reference[{i}]")),
                              request.face_index, "reference photo") for i, photo in enumerate(photos)]
        faces = analyzer.detect(_photo(request.image, "image"))
    except InstantIDError as e:
        raise HTTPException(status_code=e.status_code, detail=without_server_paths(str(e))) from e
    score = similarity.best_match(faces, average_embedding(chosen))
    return {"similarity": score, "faces": len(faces), "message": similarity.described(score)}


def _photo(data: str, field: str) -> Image.Image:
    """A photo sent to a route, within the size one request may ask to analyse."""
    if len(data) > MAX_IMAGE_CHARS:
        raise InstantIDError(f"{field} is {len(data)} base64 characters; this route takes up to {MAX_IMAGE_CHARS}.",
                             field=field)
    image = decode_image(data, field)
    if image.width * image.height > MAX_DETECT_PIXELS:
        raise InstantIDError(f"{field} is {image.width}x{image.height} pixels; this route takes up to "
                             f"{MAX_DETECT_PIXELS // 10**6} megapixels. Send a smaller photo.", field=field)
    return image


def without_server_paths(text: str) -> str:
    """`text` with the server's folders replaced by what they are: the models folder, the data folder, the WebUI."""
    roots = {Path(shared.models_path): "<models>", Path(getattr(paths, "data_path", shared.script_path)): "<data>",
             Path(shared.script_path): "<webui>"}
    for root, name in sorted(roots.items(), key=lambda item: -len(str(item[0]))):
        text = text.replace(str(root), name)
    return text


def _png_base64(rgb) -> str:
    image = Image.fromarray(rgb)
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()

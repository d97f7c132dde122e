"""The extension's own API routes: what is installed, and what the face analysis finds in a photo."""
from __future__ import annotations

import base64
import io

from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel

from .. import preview
from ..errors import InstantIDError
from ..face import onnx_providers
from ..images import decode_image
from . import a1111


class DetectRequest(BaseModel):
    image: str
    face_index: int = 0


def add_routes(demo, app: FastAPI) -> None:
    """Registered for `on_app_started`."""
    app.add_api_route("/instantid/models", models, methods=["GET"])
    app.add_api_route("/instantid/detect", detect, methods=["POST"])


def models() -> dict:
    return {
        "models": [
            {"name": e.name, "kind": e.kind, "family": e.family, "context_dim": e.context_dim}
            for e in a1111.installed_models()
        ],
        "antelopev2": _antelopev2_status(),
    }


def _antelopev2_status() -> dict:
    try:
        return {"path": str(a1111.face_analyzer_pack()), "providers": onnx_providers(), "error": None}
    except InstantIDError as e:
        return {"path": None, "providers": [], "error": str(e)}


def detect(request: DetectRequest) -> dict:
    try:
        image = decode_image(request.image, "image")
        found = preview.detect(a1111.face_analyzer(), image, request.face_index)
    except InstantIDError as e:
        raise HTTPException(status_code=e.status_code, detail=str(e)) from e
    return {
        "faces": [
            {"box": face.box.tolist(), "keypoints": face.keypoints.tolist(), "score": face.score}
            for face in found.faces
        ],
        "message": found.message,
        "preview": _png_base64(found.image),
    }


def _png_base64(rgb) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()

"""/examples: the requests in examples/, one for each step of the learning path, for the dashboard's Submit page
to start from (and anyone to read)."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from service.deps import SettingsDep
from service.errors import ERROR_RESPONSES

log = logging.getLogger(__name__)
router = APIRouter(prefix="/examples", tags=["examples"], responses=ERROR_RESPONSES)


class Example(BaseModel):
    file: str
    endpoint: Literal["/experiments", "/sweeps"]  # where the body goes
    name: str
    body: dict[str, Any]


@router.get("", response_model=list[Example])
def list_examples(settings: SettingsDep):
    """The experiments, then the sweeps, each by file name: its request body and where to send it. Empty where
    the server has no examples/ folder (TRAINLAB_EXAMPLES_DIR)."""
    examples = []
    for path in sorted(settings.examples_dir.glob("*.json")):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # a folder of one's own may hold anything
            log.warning("examples: %s is left out: %s", path, exc)
            continue
        if not isinstance(body, dict):
            log.warning("examples: %s is left out: not a JSON object", path)
            continue
        endpoint = "/sweeps" if "base" in body else "/experiments"
        examples.append(Example(file=path.name, endpoint=endpoint, name=body.get("name", path.stem), body=body))
    return sorted(examples, key=lambda example: example.endpoint == "/sweeps")

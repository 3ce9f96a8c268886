"""A run's inputs (the Responses request's side of the Files API):

- ``code_interpreter`` tool: ``container: {"type": "auto", "file_ids": [...]}`` puts the files into the
  run's new container (``source: "user"``, ``/mnt/data/<filename>``; an unknown id is a 400);
  ``container: "<cntr id>"`` runs in that container again (expired: the service's 400).
- ``previous_response_id``: unknown -> 404 "Previous response with id '...' not found.".
- Scripts: a file ``{"path": "/mnt/data/out.csv", "copy_of_input": "data.csv"}`` is written with the bytes
  of the container's file named ``data.csv`` (an input, or a file of an earlier run in that container).
- The offline stand-in (a prompt without a script marker) reads the run's input files through
  ``stand_in_inputs``.
"""

from __future__ import annotations

import os
import posixpath
import time
from typing import TYPE_CHECKING, Any

from .emulator_errors import api_error as _error
from .emulator_files import READ_BYTES, FilesApi
from .emulator_model import Container, ContainerFile, InputCopySpec, Script, ScriptFile, StoredSpec
from .standin import InputFile

if TYPE_CHECKING:
    from .emulator_state import EmulatorState


class RunInputs:
    """The hooks `Emulator.create_response` calls: a run's previous response, its container and its inputs."""

    def __init__(self, emulator: EmulatorState, files: FilesApi) -> None:
        self.emulator = emulator
        self.files = files

    def check_previous(self, body: dict[str, Any]) -> None:
        previous = body.get("previous_response_id")
        if previous is None:
            return
        run = self.emulator.runs.get(previous) if isinstance(previous, str) else None
        if run is None or run.deleted or run.request.get("store") is False:
            raise _error(404, f"Previous response with id '{previous}' not found.", "previous_response_id")

    def container_for(self, script: Script, tools: list[Any], done_at: float) -> Container:
        """The run's container: a new one with its input files, or an existing one by id."""
        tool = next(t for t in tools if isinstance(t, dict) and t.get("type") == "code_interpreter")
        spec = tool.get("container")
        if isinstance(spec, str):
            container = self.emulator.containers.get(spec)
            if container is None:
                raise _error(404, "Container not found", "tools[0].container")
            if container.is_expired(time.time()):
                raise _error(400, "Container is expired.")
            container.files += self._script_files(script, container)
            container.done_at = done_at
            container.expires = script.container_expires
            return container
        file_ids = spec.get("file_ids") if isinstance(spec, dict) else None
        file_ids = file_ids or []
        if not isinstance(file_ids, list) or len(file_ids) > 50:
            raise _error(400, "Invalid 'tools[0].container.file_ids': at most 50 file ids.", "tools[0].container")
        inputs = []
        for file_id in file_ids:
            stored = self.files.live_file(file_id) if isinstance(file_id, str) else None
            if stored is None:
                raise _error(400, f"File {file_id} not found.", "tools[0].container.file_ids")
            inputs.append(stored)
        now = int(time.time())
        container = Container(
            id="cntr_" + os.urandom(16).hex(),
            script=script,
            files=[],
            expires=script.container_expires,
            done_at=done_at,
        )
        for stored in inputs:
            user_spec = StoredSpec(
                path=f"/mnt/data/{stored.filename}",
                size=stored.size,
                sha256=stored.sha256,
                seed=None,
                data=None,
                source="user",
                cite=False,
                stored=stored,
            )
            file_id = "cfile_" + os.urandom(16).hex()
            container.files.append(ContainerFile(id=file_id, spec=user_spec, created_at=now))
        container.files += self._script_files(script, container)
        self.emulator.containers[container.id] = container
        return container

    def _script_files(self, script: Script, container: Container) -> list[Any]:
        """The script's files for this run, copies of container files resolved to their bytes."""
        now = int(time.time())
        made = []
        for spec in script.files:
            if isinstance(spec, InputCopySpec):
                source = next(
                    (cf.spec for cf in container.files if posixpath.basename(cf.spec.path) == spec.copy_of_input),
                    None,
                )
                if source is None:
                    raise _error(400, f"Emulator: the container has no file {spec.copy_of_input!r} to copy.")
                spec = StoredSpec(
                    path=spec.path,
                    size=source.size,
                    sha256=source.sha256,
                    seed=None,
                    data=None,
                    cite=spec.cite,
                    stored=source,
                )
            made.append(ContainerFile(id="cfile_" + os.urandom(16).hex(), spec=spec, created_at=now))
        return made

    def stand_in_inputs(self, tools: list[Any], limit: int) -> list[InputFile]:
        """The files a run's container will hold, for the offline stand-in (local_azure/standin.py): the
        uploaded files its `file_ids` name, or the files of the container it runs in again; at most `limit`
        bytes of each are read. Unknown ids are left to `container_for`, which answers them."""
        tool = next((t for t in tools if isinstance(t, dict) and t.get("type") == "code_interpreter"), {})
        spec = tool.get("container")
        sources: list[tuple[str, Any]] = []
        if isinstance(spec, str):
            container = self.emulator.containers.get(spec)
            if container is not None:
                sources = [(posixpath.basename(cf.spec.path), cf.spec) for cf in container.present()]
        elif isinstance(spec, dict) and isinstance(spec.get("file_ids"), list):
            found = (self.files.live_file(i) for i in spec["file_ids"][:50] if isinstance(i, str))
            sources = [(stored.filename, stored) for stored in found if stored is not None]
        inputs = []
        for name, source in sources:
            data = bytearray()
            for block in source.chunks(READ_BYTES):
                data += block[: limit - len(data)]
                if len(data) >= limit:
                    break
            inputs.append(InputFile(name=name, data=bytes(data), size=int(source.size)))
        return inputs


def parse_copy_file(index: int, raw: dict[str, Any]) -> ScriptFile:
    """A script file `{"path", "copy_of_input": "<name>", "cite"?}` (the hook in `_parse_file`)."""
    name = raw.get("copy_of_input")
    if not isinstance(name, str) or not name:
        raise _error(400, f"files[{index}].copy_of_input must be a file name", "files")
    spec: ScriptFile = InputCopySpec(
        path=raw["path"], size=0, sha256="", seed=None, data=b"", cite=bool(raw.get("cite", True)), copy_of_input=name
    )
    return spec

"""The `pard` model for Triton Inference Server's python backend: PARD speculative decoding with a
pard_export Session (written by `pard-export triton`; its config.pbtxt says which engine and environment).

Everything but Triton's own objects lives in pard_export.triton_repo (protocol: the IO; serving: batching
and responses), so it is tested without a server.
"""

import json
import os
import site
from pathlib import Path

# The backend's stub embeds the system Python, ignores PYTHONPATH and imports triton_python_backend_utils (which
# needs numpy) right after this file: first add the environment that holds pard_export and its runtime
# dependencies, listed beside this file (addsitedir also runs its .pth files: editable installs work).
for _folder in Path(__file__).with_name("python_path.txt").read_text().splitlines():
    if _folder.strip():
        site.addsitedir(_folder.strip())

import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        from pard_export.runtime import Scheduler, Session
        from pard_export.triton_repo import protocol, serving

        self.protocol, self.serving = protocol, serving
        engine = os.path.join(args["model_repository"], args["model_version"], parameters["engine_dir"])
        threads = int(parameters.get("threads") or 0) or None
        self.session = Session(engine, threads=threads)
        # calibration: loaded, or measured now (once per engine and host), not during the first request
        self.scheduler = Scheduler(self.session, max_batch=int(config["max_batch_size"]))
        self.outbox = serving.Outbox()
        self.max_tokens_limit = int(parameters["max_tokens_limit"])
        pb_utils.Logger.log_info(
            f"pard: serving {engine} (k={self.session.manifest.k}, "
            f"{self.session.manifest.backend}, {self.session.providers[0]})"
        )

    def execute(self, requests):
        """Each request joins the scheduler's running batch; its responses go through its response sender from the
        scheduler's thread (decoupled), so this returns at once."""
        for request in requests:
            responder = _Responder(request)
            try:
                parsed = self.protocol.parse_request(lambda name: _input(request, name), self.max_tokens_limit)
            except self.protocol.RequestError as e:
                responder.fail(str(e))
                continue
            self.serving.submit(self.scheduler, parsed, responder, self.outbox)
        return None

    def finalize(self):
        self.scheduler.close()  # requests still in flight end (cancelled)
        self.outbox.close()
        self.session.close()


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class _Responder:
    def __init__(self, request):
        self.request, self.sender = request, request.get_response_sender()

    def send(self, tensors, final):
        response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in tensors.items()])
        self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)

    def fail(self, message):
        response = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
        self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def cancelled(self):
        return self.request.is_cancelled()

"""KServe (a third-party server) serving `addone` (y = x + 1) on its v1 (TF Serving-style) and v2 REST APIs.

    python serve.py HTTP_PORT

KServe binds every interface and has no option against it: uvicorn's config is wrapped to bind
127.0.0.1 only, and its gRPC server is off.
"""

import sys

import numpy as np
import uvicorn

_config_init = uvicorn.Config.__init__


def _loopback_config(self, *args, **kwargs):
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_config

import kserve  # noqa: E402


class AddOne(kserve.Model):
    def __init__(self) -> None:
        super().__init__("addone")
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, dict):   # v1: {"instances": [...]}
            x = np.asarray(payload["instances"], dtype=np.float32)
            return {"predictions": (x + 1).tolist()}
        raise ValueError("this test model speaks the v1 protocol")


if __name__ == "__main__":
    kserve.ModelServer(http_port=int(sys.argv[1]), enable_grpc=False, workers=1).start([AddOne()])

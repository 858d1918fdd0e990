"""The locustfile behind ``locustfiles/ovms.py`` and ``ovms-bench``: one user class, API chosen by --api.

    locust -f locustfiles/ovms.py --host 127.0.0.1:9000 --api tfs --model_name resnet --bs "1 2" \
        --headless -u 8 -t 30s

Options keep the OVMS client's long names (`locust -f locustfiles/ovms.py --help`, section
"OVMS benchmark"); they also come from locust.conf, LOCUST_* variables and the web UI form.
"""

from metrics_ext import locust_ext  # noqa: F401, I001  (the OVMS metric set, merged across processes)
from ovms_users import locust_plugin  # noqa: F401  (first: gRPC under gevent, options, checks)
from ovms_users.users import ModelServerUser


class OvmsUser(ModelServerUser):
    """Inference over the API chosen with --api (tfs, kfs, tfs-rest, kfs-rest)."""

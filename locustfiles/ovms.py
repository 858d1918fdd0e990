"""Benchmark a model server with the OVMS benchmark client's workload, on Locust.

    locust -f locustfiles/ovms.py --host 127.0.0.1:9000 --api tfs --model_name resnet --bs "1 2" \
        --headless -u 8 -t 30s

Options keep the OVMS client's long names (`locust -f locustfiles/ovms.py --help`, section
"OVMS benchmark"); they also come from locust.conf, LOCUST_* variables and the web UI form.
"""

from ovms_users.locustfile import OvmsUser  # noqa: F401  (the user class; importing it sets everything up)

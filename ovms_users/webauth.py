"""The Locust side of README "Security": web UI login, secrets kept out of the web UI, the --tls_no_verify warning.

Locust's ``--web-login`` puts every page and API of the web UI behind its login page, but checks no
credentials itself. ``--web_credentials USER:PASSWORD`` (or ``LOCUST_WEB_CREDENTIALS``; never in the
web UI's form) is the check: the login form's user and password are compared with
``hmac.compare_digest``; the session is signed with ``FLASK_SECRET_KEY`` or, without it, a random key
per process (a restart logs everyone out). ``--web-login`` without credentials stops with one line.

Installed by ``ovms_users.locust_plugin`` (one import); its listeners run in every Locust process.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import sys
from typing import Any

from locust import events
from locust.runners import WorkerRunner

from ovms_users.errors import OptionError
from ovms_users.security import NO_VERIFY_WARNING, parse_credentials, parse_headers

__all__ = ["SECRET_OPTIONS"]

log = logging.getLogger("ovms_users")

#: options whose values never go into the web UI's page (they are not in its form either)
SECRET_OPTIONS = ("header", "web_credentials", "web_auth")
#: seconds a failed login waits before its answer (slows guessing down)
FAILED_LOGIN_DELAY = 0.5


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_kw: Any) -> None:
    parser.add_argument("--web_credentials", default="", env_var="LOCUST_WEB_CREDENTIALS", include_in_web_ui=False,
                        metavar="USER:PASSWORD",
                        help="with --web-login: the web UI's user and password (prefer LOCUST_WEB_CREDENTIALS: a "
                             "command line is visible to other users of the machine)")


def _fail(message: str) -> None:
    sys.stderr.write(f"ovms: error: {message}\n")
    sys.stderr.flush()
    sys.exit(2)


class _User:
    """flask_login's user (UserMixin's interface, without importing flask_login at module import)."""
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, name: str) -> None:
        self.name = name

    def get_id(self) -> str:
        return self.name


def _install_login(environment: Any, web_ui: Any, credentials: tuple[str, str]) -> None:
    import gevent
    from flask import redirect, request, session, url_for
    from flask_login import login_user, logout_user

    user, password = credentials
    base = getattr(environment.parsed_options, "web_base_path", "") or ""
    app = web_ui.app
    app.config["SECRET_KEY"] = os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"

    @web_ui.login_manager.user_loader
    def _load(user_id: str) -> _User | None:
        return _User(user) if hmac.compare_digest(str(user_id).encode(), user.encode()) else None

    def login_submit() -> Any:
        given_user = request.form.get("username") or ""
        given_password = request.form.get("password") or ""
        # both compared, always: the time taken says nothing about which one was wrong
        ok_user = hmac.compare_digest(given_user.encode(), user.encode())
        ok_password = hmac.compare_digest(given_password.encode(), password.encode())
        if ok_user and ok_password:
            session.clear()
            login_user(_User(user))
            return redirect(url_for("locust.index"))
        log.warning("web UI: a failed login from %s", request.remote_addr)
        gevent.sleep(FAILED_LOGIN_DELAY)
        session["auth_error"] = "Invalid username or password"
        return redirect(url_for("locust.login"))

    def logout() -> Any:
        logout_user()
        session["auth_info"] = "Logged out"
        return redirect(url_for("locust.login"))

    app.add_url_rule(f"{base}/ovms_login", "ovms_login_submit", login_submit, methods=["POST"])
    app.add_url_rule(f"{base}/ovms_logout", "ovms_logout", logout, methods=["GET", "POST"])
    web_ui.auth_args = {"username_password_callback": f"{base}/ovms_login"}


def _hide_secrets_from_page(web_ui: Any) -> None:
    """The page embeds the form's options with their values: a secret (a MongoDB password) never goes in it.

    A --db_endpoint holding a password is left out of the form (it is used as given); the other secret
    options are never in the form.
    """
    from metrics_ext.mongo import mask_uri

    original = web_ui.update_template_args

    def scrub() -> None:
        extra = web_ui.template_args.get("extra_options")
        if not isinstance(extra, dict):
            return
        for name in list(extra):
            value = (extra[name] or {}).get("default_value") if isinstance(extra[name], dict) else None
            if name in SECRET_OPTIONS or (isinstance(value, str) and mask_uri(value) != value):
                del extra[name]

    def update_template_args() -> None:
        original()
        scrub()

    web_ui.update_template_args = update_template_args
    scrub()


@events.init.add_listener
def _secure(environment: Any, **_kw: Any) -> None:
    parsed, web_ui = environment.parsed_options, environment.web_ui
    if parsed is None or isinstance(environment.runner, WorkerRunner):
        return
    try:
        parse_headers(getattr(parsed, "header", None))   # checked at start, whatever the mode (values never shown)
        credentials = parse_credentials(parsed.web_credentials) if getattr(parsed, "web_credentials", "") else None
    except OptionError as exc:
        _fail(str(exc))
        return
    if getattr(parsed, "tls_no_verify", False):
        sys.stderr.write(NO_VERIFY_WARNING + "\n")
        sys.stderr.flush()
    if web_ui is None:
        return
    _hide_secrets_from_page(web_ui)
    if getattr(parsed, "web_login", False):
        if credentials is None:
            _fail("--web-login: give the web UI's user and password with --web_credentials USER:PASSWORD (or "
                  "LOCUST_WEB_CREDENTIALS=USER:PASSWORD)")
        _install_login(environment, web_ui, credentials)
    elif credentials is not None:
        log.warning("--web_credentials has no effect without --web-login: the web UI is open to anyone who "
                    "reaches it")

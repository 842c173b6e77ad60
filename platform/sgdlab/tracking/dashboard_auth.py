"""MLflow's basic-auth app for a dashboard (`sgdlab ui --auth basic`) or a tracking server (`make mlflow-server
MLFLOW_SERVER_ARGS=--auth=basic`): every request then needs a user and password.

Without it an MLflow server answers every request, writes included, from anyone who reaches its port: on
127.0.0.1 every user of this machine (a request can delete a FINISHED run, and `sgdlab status` then counts its
trial pending). The users live in an SQLite database, mlflow-auth.db, in a folder of the caller's choosing (beside
the store); the first start creates the user `admin` with a generated password, printed once.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

AUTH_DB = "mlflow-auth.db"
AUTH_CONFIG = "mlflow-auth.ini"


def basic_auth(folder: Path) -> tuple[dict[str, str], str]:
    """(environment for `mlflow server --app-name basic-auth`, a line to print) with the users in
    folder/mlflow-auth.db. Its configuration (no secret in it) is written to folder/mlflow-auth.ini. On the first
    start the environment carries a generated password for `admin`, which the line shows; MLflow ignores it once
    the user exists, and the line then says where the users are. The app's forms need a secret key for their
    CSRF tokens (MLFLOW_FLASK_SERVER_SECRET_KEY): one is generated per start unless it is set."""
    users = folder / AUTH_DB
    config = folder / AUTH_CONFIG
    config.write_text("[mlflow]\n"
                      "default_permission = READ\n"
                      f"database_uri = sqlite:///{users}\n"
                      "admin_username = admin\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)}
    if users.is_file() and users.stat().st_size > 0:
        return env, (f"sign in as a user of {users} (admin's password was printed when that file was made; "
                     "remove it to make a new one)")
    password = secrets.token_urlsafe(18)
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    return env, (f"sign in as admin, password {password} (printed this once; the users are kept in {users}; "
                 "clients: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)")

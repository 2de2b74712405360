# Jupyter server settings for the container (installed in /opt/venv/etc/jupyter).
# The token comes from the file JUPYTER_TOKEN_FILE names (compose.yaml: the secret made
# from JUPYTER_TOKEN in .env) and the port from JUPYTER_PORT; Jupyter refuses every
# request without the token.
import ipaddress
import os
import re
import sys

c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)

# Read here, whitespace stripped, rather than left to Jupyter: a token file that is
# missing or empty stops the server with a message instead of serving under a token
# nobody has. JUPYTER_TOKEN, where a user still sets one by hand, is left to Jupyter.
token_file = os.environ.get("JUPYTER_TOKEN_FILE")
if token_file and not os.environ.get("JUPYTER_TOKEN"):
    try:
        with open(token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as error:
        sys.exit(f"jupyter: cannot read the token file {token_file} ({error.strerror}): is JUPYTER_TOKEN set in .env?")
    if not token:
        sys.exit(f"jupyter: the token file {token_file} is empty: set JUPYTER_TOKEN in .env, then `make up`")
    c.IdentityProvider.token = token

# All interfaces inside the container, so Docker can forward the port; compose
# publishes it on the host's 127.0.0.1 only.
c.ServerApp.ip = "0.0.0.0"
c.ServerApp.open_browser = False
c.ServerApp.root_dir = "/workspace"
# The project's top is read-only in the container, but for the folders WRITABLE in .env
# names (README "What the container may change"): the file browser opens in notebooks/,
# where a new notebook can be saved. (An API path, relative to root_dir; it must exist.)
if os.path.isdir("/workspace/notebooks"):
    c.ContentsManager.preferred_dir = "notebooks"
# Jupyter refuses to run as root, rightly so on rootful Docker, where the container's root
# is the host's. On rootless Docker the container runs as its root (compose.yaml: user),
# which that engine maps to the host user, with no more rights than theirs: allowed there
# only (ENGINE_MODE from .env).
c.ServerApp.allow_root = os.environ.get("ENGINE_MODE") == "rootless-docker"

# Where compose publishes the port on the host (JUPYTER_BIND_ADDRESS in .env; compose
# accepts IP addresses only, so the fallback never serves).
try:
    bind_address = ipaddress.ip_address(os.environ.get("JUPYTER_BIND_ADDRESS", "127.0.0.1").strip("[]"))
except ValueError:
    bind_address = ipaddress.ip_address("127.0.0.1")

# Only the address to open on the host is printed. Jupyter's own hold the container's
# port (and hostname), which the host cannot open: custom_display_url replaces the
# first, but jupyter_server still adds its 127.0.0.1:<container port> line below it
# (and a file:// page inside the container, were the token generated), so a filter on
# its log drops every address but the host's.
if os.environ.get("JUPYTER_HOST_PORT"):
    host = bind_address
    if host.is_unspecified:  # every interface: the host's own loopback reaches it
        host = ipaddress.ip_address("::1" if host.version == 6 else "127.0.0.1")
    netloc = f"[{host}]:" if host.version == 6 else f"{host}:"
    host_url = f"http://{netloc}{os.environ['JUPYTER_HOST_PORT']}/"
    c.ServerApp.custom_display_url = f"{host_url}lab"
    in_container = re.compile(r"\s*(?!" + re.escape(host_url) + r")(file:|https?://)")

    def only_the_host_address(record):
        """A message with the container's addresses loses them, and goes altogether when
        it does not hold the host's (its "To access the server" block around them)."""
        lines = record.getMessage().split("\n")
        kept = [line for line in lines if not in_container.match(line)]
        if len(kept) == len(lines):
            return True
        record.msg, record.args = "\n".join(kept), ()
        return any(host_url in line for line in kept)

    c.ServerApp.logging_config = {
        "filters": {"only_the_host_address": {"()": lambda: only_the_host_address}},
        "loggers": {"ServerApp": {"filters": ["only_the_host_address"]}},
    }

# Published beyond the host's loopback: say so loudly (`make up` does too).
if not bind_address.is_loopback:
    print(
        f"WARNING: Jupyter is published on {bind_address}, not only on 127.0.0.1: anyone who can reach "
        "that address and has the token can run code as you. JUPYTER_BIND_ADDRESS (in .env, or in the "
        "shell that ran `make up`) sets it: remove it to publish on 127.0.0.1 only.",
        flush=True,
    )
# New notebooks start on the project's kernel, the only one offered: ipykernel's own
# "Python 3 (ipykernel)" runs the same interpreter under another name, and learners
# told to pick the project's kernel would see two.
c.MappingKernelManager.default_kernel_name = "{{ cookiecutter.project_slug }}"
c.KernelSpecManager.ensure_native_kernel = False
c.KernelSpecManager.allowed_kernelspecs = {"{{ cookiecutter.project_slug }}"}

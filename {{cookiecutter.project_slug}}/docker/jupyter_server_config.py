# Jupyter server settings for the container (installed in /opt/venv/etc/jupyter).
# The token comes from JUPYTER_TOKEN and the port from JUPYTER_PORT (compose sets
# both from .env); Jupyter refuses every request without the token.
import os

c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)

# All interfaces inside the container, so Docker can forward the port; compose
# publishes it on the host's 127.0.0.1 only.
c.ServerApp.ip = "0.0.0.0"
c.ServerApp.open_browser = False
c.ServerApp.root_dir = "/workspace"
# Print the address to open on the host, not the container's port.
if os.environ.get("JUPYTER_HOST_PORT"):
    c.ServerApp.custom_display_url = f"http://127.0.0.1:{os.environ['JUPYTER_HOST_PORT']}/lab"
# Published beyond the host's loopback (JUPYTER_BIND_ADDRESS in .env): say so loudly.
bind_address = os.environ.get("JUPYTER_BIND_ADDRESS", "127.0.0.1")
if bind_address not in ("127.0.0.1", "localhost", "::1"):
    print(
        f"WARNING: Jupyter is published on {bind_address}, not only 127.0.0.1: anyone who can reach "
        "that address and has the token can run code as you. Remove JUPYTER_BIND_ADDRESS from .env "
        "to undo.",
        flush=True,
    )
# New notebooks start on the project's kernel, the only one offered: ipykernel's own
# "Python 3 (ipykernel)" runs the same interpreter under another name, and learners
# told to pick the project's kernel would see two.
c.MappingKernelManager.default_kernel_name = "{{ cookiecutter.project_slug }}"
c.KernelSpecManager.ensure_native_kernel = False
c.KernelSpecManager.allowed_kernelspecs = {"{{ cookiecutter.project_slug }}"}

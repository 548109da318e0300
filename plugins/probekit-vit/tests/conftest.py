# Offline before transformers reads these at import; caches, markers and the figure backend come from
# probekit.testing, a pytest plugin that probekit-core installs.
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

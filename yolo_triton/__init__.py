"""YOLOv7/YOLOv4 on NVIDIA Triton: encoded images in, finished boxes out, all server-side.

``specs`` is the contract every part derives from; ``pipeline`` the request path as pure functions (no Triton
import); ``triton_models`` the thin Python-backend adapters over it; ``models`` the networks and their loaders;
``serving`` starts and guards the server; ``client`` talks to it. docs/architecture.md has the map.
"""
__version__ = "0.1.0"

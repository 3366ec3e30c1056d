"""Triton Python-backend adapters: thin shells around the pure functions of ``yolo_triton``.

Only importable inside a Triton server (they import ``triton_python_backend_utils``). Each model directory's
``1/model.py`` re-exports one ``TritonPythonModel`` from here, so the code lives in one tested package and the
model repository holds no copies.
"""

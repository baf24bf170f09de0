"""Build the one optional C module: loopfan.engine._quick, the traffic client's steady-state loop.

Optional on purpose: without a C compiler (or on a platform where it does not build) the install
still succeeds and traffic_client.py runs the same loop in Python - identical figures, more CPU.
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("loopfan.engine._quick", ["src/loopfan/engine/_quick.c"], optional=True,
                             extra_compile_args=["-O2"])])

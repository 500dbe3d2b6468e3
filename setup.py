"""hiennu: self-configuring segmentation of HIE lesions in neonatal diffusion MRI."""

import sys

from setuptools import Extension, find_packages, setup

# The exact linear-time distance transform of the Hausdorff losses (plain C, CPython API only).
# Optional: without a C compiler the install still succeeds (setuptools prints a warning) and the
# "auto" back-end falls back to SimpleITK's exact transform.
EDT_EXTENSION = Extension(
    "hiennu.losses._edt",
    sources=["hiennu/losses/_edt.c"],
    extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
    optional=True,
)

TRITON = 'triton; platform_system == "Linux" and platform_machine == "x86_64"'

SCRIPTS = {
    "hiennu_convert_bonbid": "convert_bonbid",
    "hiennu_make_synthetic": "make_synthetic",
    "hiennu_plan_and_preprocess": "plan_and_preprocess",
    "hiennu_train": "train",
    "hiennu_predict": "predict",
    "hiennu_predict_challenge": "predict_challenge",
    "hiennu_evaluate": "evaluate",
    "hiennu_plot_overlay": "plot_overlay",
    "hiennu_determine_postprocessing": "determine_postprocessing",
    "hiennu_apply_postprocessing": "apply_postprocessing",
    "hiennu_find_best_configuration": "find_best_configuration",
    "hiennu_ensemble": "ensemble",
    "hiennu_train_default_model": "train_default_model",
    "hiennu_export_model": "export_model",
    "hiennu_install_model": "install_model",
    "hiennu_loss_study": "loss_study",
    "hiennu_demo": "demo",
}

setup(
    name="hiennu",
    version="0.1.0",
    description="nnU-Net-style self-configuring segmentation of HIE lesions in neonatal ADC/ZADC MRI (BONBID-HIE)",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hiennu", "hiennu.*"]),
    ext_modules=[EDT_EXTENSION],
    install_requires=[
        # any recent torch works; scripts/install.sh keeps an installed one, else installs the CPU build
        # (HIENNU_TORCH=cuda for the CUDA build; see README.md).
        "torch>=2.1",
        "numpy>=1.24",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "scipy>=1.10",
        "scikit-image>=0.21",
        "acvl-utils>=0.2",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=7", "surface-distance"],
        # triton (several hundred MB): its CPU interpreter checks the CUDA distance-transform kernel;
        # CI installs it (.ci/run), CUDA builds of torch ship it, and its tests skip without it
        "triton": [TRITON],
        # peers timed side by side by the scripts in benchmarks/
        "bench": ["nnunetv2", "monai", "surface-distance", TRITON],
    },
    entry_points={"console_scripts": [f"{cmd}=hiennu.cli.{mod}:main" for cmd, mod in SCRIPTS.items()]},
)

"""The embedded teacher: a diffusers UNet2DConditionModel folder (see ../teacher.py).

A package only so that installs carry its config.json, scheduler_config.json and
diffusion_pytorch_model.safetensors as package data; load it with
``UNet2DConditionModel.from_pretrained(<this folder>)``.
"""

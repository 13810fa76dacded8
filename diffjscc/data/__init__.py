"""Image data: safe CIFAR-10 extraction to PNG folders, the [-1, 1] image-folder dataset, and
random crops of photos of any size."""

from diffjscc.data.cifar10 import (
    CIFAR10_MD5,
    CIFAR10_URL,
    CLASS_NAMES,
    RestrictedUnpickler,
    check_tar_member,
    download_cifar10,
    extract_cifar10,
    load_batch,
    load_meta,
    read_cifar10,
)
from diffjscc.data.crops import RandomCropDataset
from diffjscc.data.folder import (
    IMAGE_EXTENSIONS,
    NO_LABEL,
    ImageFolderDataset,
    label_prefix,
    load_image_tensor,
    save_image_tensor,
)

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "CLASS_NAMES",
    "IMAGE_EXTENSIONS",
    "NO_LABEL",
    "RandomCropDataset",
    "ImageFolderDataset",
    "RestrictedUnpickler",
    "check_tar_member",
    "download_cifar10",
    "extract_cifar10",
    "label_prefix",
    "load_batch",
    "load_image_tensor",
    "load_meta",
    "read_cifar10",
    "save_image_tensor",
]

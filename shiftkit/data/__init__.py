"""Data layer: tables of images, readers, preprocessing, caching, datasets."""

from shiftkit.data.cache import ImageCache
from shiftkit.data.dataset import ImageDataset, collate, stratified_split
from shiftkit.data.preprocess import Preprocessing
from shiftkit.data.readers import ReadOptions, read_image
from shiftkit.data.table import ImageRecord, ImageTable, load_table, read_manifest
from shiftkit.data.validate import SkippedImage, decode_all

__all__ = [
    "ImageCache", "ImageDataset", "ImageRecord", "ImageTable", "Preprocessing", "ReadOptions",
    "SkippedImage", "collate", "decode_all", "load_table", "read_image", "read_manifest", "stratified_split",
]

"""Corpus pipeline: grid, harvest, scene matching, co-registration and Zarr/Parquet writers on Apache Beam and Dask."""

from terraloom.pipeline.xarray_view import sample_dataarray

__all__ = ["sample_dataarray"]

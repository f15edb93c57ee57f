"""Corpus pipeline: grid, harvest, scene matching, co-registration and Zarr/Parquet writers on Apache Beam and Dask."""

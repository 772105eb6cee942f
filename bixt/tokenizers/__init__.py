"""Tokenisers: turn raw inputs (images, point clouds, bytes) into token sequences."""

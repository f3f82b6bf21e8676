//! Synthetic, identifiable mpMRI corpora (being written).

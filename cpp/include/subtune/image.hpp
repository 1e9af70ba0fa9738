// Images for subtune::Model: read PPM/PGM (always) and PNG (when built with libpng), then
// preprocess exactly as subtune's Python image loader does (subtune/training/sources.py and
// ImageDataset.batch): convert to RGB, resize with PIL's BILINEAR filter (its 8-bit fixed-point
// arithmetic, antialiased when shrinking), scale to [0, 1] by /255, then (x - mean) / std in
// float32, laid out [3, H, W].
//
// Refused with a subtune::Error (one line): unreadable or truncated files, formats other than
// binary PPM (P6) / PGM (P5) / PNG, maxval other than 255, 16-bit PNGs, and images with an alpha
// channel or transparency (Python's loader drops alpha silently; here it is an error: flatten it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "subtune/model.hpp"

namespace subtune {

struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;             // 1 (grey) or 3 (RGB)
  std::vector<uint8_t> pixels;  // height x width x channels
};

Image read_image(const std::string& path);
bool png_supported();  // false when built without libpng: read_image refuses PNGs with a clear line

Image to_rgb(const Image& image);
// PIL's Image.resize((width, height), Image.BILINEAR) on an RGB image; the same image when the
// size already matches.
Image resize_bilinear(const Image& rgb, int width, int height);
// [3, H, W] float32 into `out`: /255, then (x - mean) / std.
void normalize(const Image& rgb, const Preprocess& p, float* out);
// read_image -> to_rgb -> resize_bilinear -> normalize, into out[0 .. 3*H*W).
void load_preprocessed(const std::string& path, const Preprocess& p, float* out);

}  // namespace subtune

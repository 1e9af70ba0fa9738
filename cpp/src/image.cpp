// Image reading and PIL-compatible preprocessing (see include/subtune/image.hpp).
#include "subtune/image.hpp"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <sys/stat.h>

#ifdef SUBTUNE_WITH_PNG
#include <csetjmp>
#include <png.h>
#endif

namespace subtune {
namespace {

constexpr int64_t kMaxPixels = int64_t(1) << 28;  // 268 M pixels: a larger header is a broken file

std::vector<uint8_t> read_file(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw Error(path + ": is a folder; expected a PPM/PGM or PNG image file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": no such file or not readable; expected a PPM/PGM or PNG image");
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Binary PNM (P5 grey, P6 RGB), maxval 255: header fields separated by whitespace and
// #-comments, then exactly one whitespace byte, then the pixels.
Image read_pnm(const std::string& path, const std::vector<uint8_t>& bytes) {
  if (bytes.size() >= 2 && bytes[0] == 'P' && (bytes[1] == '2' || bytes[1] == '3'))
    throw Error(path + ": plain (ASCII) PNM P" + std::string(1, char(bytes[1])) +
                " is not supported; save it as binary PPM (P6) or PGM (P5)");
  if (bytes.size() >= 2 && bytes[0] == 'P' && bytes[1] == '7')
    throw Error(path + ": PAM (P7) is not supported; save it as binary PPM (P6), PGM (P5) or PNG");
  int channels = bytes[1] == '6' ? 3 : 1;
  size_t pos = 2;
  long fields[3] = {0, 0, 0};
  for (long& field : fields) {
    for (;;) {  // whitespace and comments
      if (pos >= bytes.size()) throw Error(path + ": PPM header ends early; the file is truncated");
      if (bytes[pos] == '#') {
        while (pos < bytes.size() && bytes[pos] != '\n') ++pos;
      } else if (std::isspace(bytes[pos])) {
        ++pos;
      } else {
        break;
      }
    }
    if (!std::isdigit(bytes[pos])) throw Error(path + ": PPM header is not width height maxval; not a valid PPM");
    field = 0;
    while (pos < bytes.size() && std::isdigit(bytes[pos])) {
      field = field * 10 + (bytes[pos++] - '0');
      if (field > (1L << 30)) throw Error(path + ": PPM header holds an absurd number; not a valid PPM");
    }
  }
  if (pos >= bytes.size() || !std::isspace(bytes[pos])) throw Error(path + ": PPM header is not followed by whitespace");
  ++pos;
  long width = fields[0], height = fields[1], maxval = fields[2];
  if (width < 1 || height < 1)
    throw Error(path + ": image is " + std::to_string(width) + "x" + std::to_string(height) + "; expected at least 1x1");
  if (width * height > kMaxPixels)
    throw Error(path + ": image is " + std::to_string(width) + "x" + std::to_string(height) + ", larger than subtune reads");
  if (maxval != 255)
    throw Error(path + ": maxval " + std::to_string(maxval) + "; expected 8-bit samples (maxval 255): convert the image");
  size_t need = size_t(width) * size_t(height) * channels;
  if (bytes.size() - pos < need)
    throw Error(path + ": truncated: its header says " + std::to_string(width) + "x" + std::to_string(height) + "x" +
                std::to_string(channels) + " (" + std::to_string(need) + " bytes of pixels) but it holds " +
                std::to_string(bytes.size() - pos));
  Image img;
  img.width = int(width);
  img.height = int(height);
  img.channels = channels;
  img.pixels.assign(bytes.begin() + pos, bytes.begin() + pos + need);
  return img;
}

#ifdef SUBTUNE_WITH_PNG
// libpng reports an error by calling png_error_fn, which longjmps back to the setjmp of the libpng
// call that failed. Each such call runs in a function of its own below, whose frame holds only its
// parameters, never modified: no local can be left indeterminate by the jump and no C++ object's
// destructor is skipped. The C++ objects live in read_png, which sees true or false.
struct PngState {
  std::string message;
};

void png_error_fn(png_structp png, png_const_charp msg) {
  static_cast<PngState*>(png_get_error_ptr(png))->message = msg ? msg : "libpng error";
  png_longjmp(png, 1);
}
void png_warning_fn(png_structp, png_const_charp) {}

bool png_start(png_structp png, png_infop info, FILE* file) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_init_io(png, file);
  png_read_info(png, info);
  return true;
}

// No gamma or colour transformation, so the samples are the file's as PIL reads them: palettes
// expand to RGB, 1/2/4-bit grey scales to 8 bits.
bool png_expand(png_structp png, png_infop info, int color, int bit_depth) {
  if (setjmp(png_jmpbuf(png))) return false;
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  png_read_update_info(png, info);
  return true;
}

bool png_rows(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  return true;
}

class PngReader {
 public:
  explicit PngReader(PngState* state)
      : png_(png_create_read_struct(PNG_LIBPNG_VER_STRING, state, png_error_fn, png_warning_fn)),
        info_(png_ ? png_create_info_struct(png_) : nullptr) {}
  ~PngReader() { png_destroy_read_struct(&png_, &info_, nullptr); }
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;
  bool ok() const { return png_ && info_; }
  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  png_structp png_;
  png_infop info_;
};

Image read_png(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw Error(path + ": no such file or not readable; expected a PPM/PGM or PNG image");
  PngState state;
  PngReader reader(&state);
  if (!reader.ok()) throw Error(path + ": libpng could not start");
  png_structp png = reader.png();
  png_infop info = reader.info();
  auto failed = [&] { return Error(path + ": not a readable PNG (" + state.message + ")"); };

  if (!png_start(png, info, f.get())) throw failed();
  png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  int bit_depth = png_get_bit_depth(png, info), color = png_get_color_type(png, info);
  if ((color & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS))
    throw Error(path + ": " + std::to_string(png_get_channels(png, info)) + " channels with alpha or transparency; "
                "expected grey or RGB (1 or 3 channels): flatten the alpha channel first");
  if (bit_depth == 16) throw Error(path + ": 16-bit samples; expected 8-bit grey or RGB: convert the image");
  if (int64_t(width) * height > kMaxPixels)
    throw Error(path + ": image is " + std::to_string(width) + "x" + std::to_string(height) + ", larger than subtune reads");

  if (!png_expand(png, info, color, bit_depth)) throw failed();
  Image img;
  img.width = int(width);
  img.height = int(height);
  img.channels = png_get_channels(png, info);
  if (img.channels != 1 && img.channels != 3)
    throw Error(path + ": " + std::to_string(img.channels) + " channels; expected grey or RGB (1 or 3)");
  size_t stride = png_get_rowbytes(png, info);
  img.pixels.resize(stride * height);
  std::vector<png_bytep> rows(height);
  for (png_uint_32 y = 0; y < height; ++y) rows[y] = img.pixels.data() + y * stride;
  if (!png_rows(png, rows.data())) throw failed();
  return img;
}
#endif

// Pillow's resampling (libImaging/Resample.c), bilinear filter, 8 bits per sample.
constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // (xmin, count) per output position
  std::vector<int32_t> k;   // fixed-point weights, ksize per output position
};

Coeffs precompute(int in_size, int out_size) {
  const double support_1 = 1.0;  // bilinear
  double scale = double(in_size) / out_size;  // box (0, in_size): float-exact for any image size
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = support_1 * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.bounds.resize(size_t(out_size) * 2);
  std::vector<double> kk(size_t(out_size) * c.ksize, 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &kk[size_t(xx) * c.ksize];
    for (int x = 0; x < xmax; ++x) {
      double w = bilinear_filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    c.bounds[size_t(xx) * 2] = xmin;
    c.bounds[size_t(xx) * 2 + 1] = xmax;
  }
  c.k.resize(kk.size());
  for (size_t i = 0; i < kk.size(); ++i)
    c.k[i] = kk[i] < 0 ? int32_t(-0.5 + kk[i] * (1 << kPrecisionBits)) : int32_t(0.5 + kk[i] * (1 << kPrecisionBits));
  return c;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;  // arithmetic shift, as Pillow's lookup table index
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

Image resample_horizontal(const Image& in, int out_w) {
  Coeffs c = precompute(in.width, out_w);
  Image out{out_w, in.height, 3, std::vector<uint8_t>(size_t(out_w) * in.height * 3)};
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* src = &in.pixels[size_t(y) * in.width * 3];
    uint8_t* dst = &out.pixels[size_t(y) * out_w * 3];
    for (int xx = 0; xx < out_w; ++xx) {
      int xmin = c.bounds[size_t(xx) * 2], xmax = c.bounds[size_t(xx) * 2 + 1];
      const int32_t* k = &c.k[size_t(xx) * c.ksize];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t* p = src + size_t(x + xmin) * 3;
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      dst[xx * 3] = clip8(s0);
      dst[xx * 3 + 1] = clip8(s1);
      dst[xx * 3 + 2] = clip8(s2);
    }
  }
  return out;
}

Image resample_vertical(const Image& in, int out_h) {
  Coeffs c = precompute(in.height, out_h);
  Image out{in.width, out_h, 3, std::vector<uint8_t>(size_t(in.width) * out_h * 3)};
  size_t row = size_t(in.width) * 3;
  for (int yy = 0; yy < out_h; ++yy) {
    int ymin = c.bounds[size_t(yy) * 2], ymax = c.bounds[size_t(yy) * 2 + 1];
    const int32_t* k = &c.k[size_t(yy) * c.ksize];
    uint8_t* dst = &out.pixels[size_t(yy) * row];
    for (size_t i = 0; i < row; ++i) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; ++y) s += in.pixels[size_t(y + ymin) * row + i] * k[y];
      dst[i] = clip8(s);
    }
  }
  return out;
}

}  // namespace

bool png_supported() {
#ifdef SUBTUNE_WITH_PNG
  return true;
#else
  return false;
#endif
}

Image read_image(const std::string& path) {
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> bytes = read_file(path);
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), png_sig, 8) == 0) {
#ifdef SUBTUNE_WITH_PNG
    return read_png(path);
#else
    throw Error(path + ": PNG support was not built (libpng was not found at build time); convert it to PPM "
                "or install libpng-dev and rebuild");
#endif
  }
  if (bytes.size() >= 2 && bytes[0] == 'P' && bytes[1] >= '2' && bytes[1] <= '7') return read_pnm(path, bytes);
  if (bytes.empty()) throw Error(path + ": empty file; expected a PPM/PGM or PNG image");
  throw Error(path + ": not a PPM/PGM or PNG image (unknown signature); convert it to PNG or binary PPM");
}

Image to_rgb(const Image& image) {
  if (image.channels == 3) return image;
  if (image.channels != 1)
    throw Error("image has " + std::to_string(image.channels) + " channels; expected grey or RGB (1 or 3)");
  Image out{image.width, image.height, 3, std::vector<uint8_t>(image.pixels.size() * 3)};
  for (size_t i = 0; i < image.pixels.size(); ++i)
    out.pixels[i * 3] = out.pixels[i * 3 + 1] = out.pixels[i * 3 + 2] = image.pixels[i];
  return out;
}

Image resize_bilinear(const Image& rgb, int width, int height) {
  if (rgb.channels != 3) throw Error("resize_bilinear: expected an RGB image");
  if (width < 1 || height < 1) throw Error("resize_bilinear: the target size must be positive");
  // Pillow: horizontal pass first when the width changes, then vertical when the height does.
  Image out = rgb.width != width ? resample_horizontal(rgb, width) : rgb;
  if (rgb.height != height) out = resample_vertical(out, height);
  return out;
}

void normalize(const Image& rgb, const Preprocess& p, float* out) {
  if (rgb.channels != 3) throw Error("normalize: expected an RGB image");
  size_t plane = size_t(rgb.width) * rgb.height;
  for (int c = 0; c < 3; ++c) {
    const float mean = p.mean[c], sd = p.std[c];
    for (size_t i = 0; i < plane; ++i) {
      // float32 throughout, in torch's order: x / 255, then (x - mean) / std.
      // (no FMA contraction: the library builds with -ffp-contract=off)
      float x = float(rgb.pixels[i * 3 + c]) / 255.0f;
      out[c * plane + i] = (x - mean) / sd;
    }
  }
}

void load_preprocessed(const std::string& path, const Preprocess& p, float* out) {
  if (p.channels != 3)
    throw Error(path + ": the graph's preprocessing asks for " + std::to_string(p.channels) +
                " channels; subtune graphs take 3");
  Image img = to_rgb(read_image(path));
  normalize(resize_bilinear(img, p.width, p.height), p, out);
}

}  // namespace subtune

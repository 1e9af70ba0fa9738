// The example of docs/cpp.md ("Use"): each task's best class for each image given, by name.
//   subtune-example-classify MODEL.onnx IMAGE...
#include <subtune/image.hpp>
#include <subtune/model.hpp>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: subtune-example-classify MODEL.onnx IMAGE...\n";
    return 2;
  }
  try {
    subtune::Model model(argv[1], {/*threads=*/2});         // loads and checks the metadata
    auto pre = model.preprocess();                          // size, mean, std the tasks were trained with
    if (!pre) throw subtune::Error("the graph records no preprocessing");
    const size_t per = size_t(3) * pre->height * pre->width;
    std::vector<float> x(per * (argc - 2));
    for (int i = 2; i < argc; ++i)                          // resize + normalise as subtune's Python loader
      subtune::load_preprocessed(argv[i], *pre, x.data() + (i - 2) * per);
    subtune::Outputs out = model.run(x, argc - 2);          // [batch, 3, H, W] -> every output at once
    for (int i = 0; i < argc - 2; ++i)
      for (const auto& task : model.tasks()) {
        const subtune::Tensor& logits = out.at(task.name);  // [batch, classes]
        int best = subtune::top_k(logits.row(i), int(logits.cols()), 1)[0].first;
        std::cout << argv[i + 2] << " " << task.name << ": " << model.classes(task.name).at(best) << "\n";
      }
  } catch (const std::exception& e) {                       // subtune::Error: one line, what to do
    std::cerr << e.what() << "\n";
    return 1;
  }
}

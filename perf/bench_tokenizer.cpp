// Tokenizer throughput: encode every text of a JSONL data set, single-threaded, one call per text, as
// perf/peer_tokenizer.py does with Hugging Face `tokenizers`. --ids-out writes every id as little-endian
// int32 in text order, so the run script can check both produced the same ids (sha256). Prints one JSON line.
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "slearn/threads.hpp"
#include "slearn/tokenizer.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Tokenizer throughput benchmark"};
  std::string tokenizer_dir, texts_path, ids_out;
  std::string fields_list = "question,answer,output,instruction,input,context,long_answer";
  int repeat = 3;
  app.add_option("--tokenizer", tokenizer_dir)->required();
  app.add_option("--texts", texts_path, "JSONL data set")->required();
  app.add_option("--field-list", fields_list, "string fields taken as texts, in this order")->capture_default_str();
  app.add_option("--repeat", repeat, "timed passes; the best is reported")->capture_default_str();
  app.add_option("--ids-out", ids_out, "write all ids here (little-endian int32)");
  CLI11_PARSE(app, argc, argv);

  try {
    slearn::apply_thread_plan(slearn::plan_threads(1));
    std::vector<std::string> fields;
    std::stringstream list(fields_list);
    for (std::string f; std::getline(list, f, ',');) fields.push_back(f);

    std::vector<std::string> texts;
    std::size_t bytes = 0;
    std::ifstream in(texts_path);
    if (!in) throw std::runtime_error("cannot open " + texts_path);
    for (std::string line; std::getline(in, line);) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const auto record = nlohmann::json::parse(line);
      for (const auto& field : fields) {
        auto it = record.find(field);
        if (it != record.end() && it->is_string()) {
          texts.push_back(it->get<std::string>());
          bytes += texts.back().size();
        }
      }
    }

    const slearn::Tokenizer tokenizer = slearn::Tokenizer::from_dir(tokenizer_dir);
    double best = 1e30, cold = 0;
    std::size_t tokens = 0;
    std::vector<slearn::TokenId> all_ids;
    for (int r = 0; r < repeat; ++r) {
      const auto start = std::chrono::steady_clock::now();
      std::size_t count = 0;
      for (const auto& text : texts) count += tokenizer.encode(text).size();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (r == 0) cold = seconds;  // the first pass: the word cache starts empty
      best = std::min(best, seconds);
      tokens = count;
    }
    if (!ids_out.empty()) {
      std::ofstream out(ids_out, std::ios::binary);
      for (const auto& text : texts) {
        auto ids = tokenizer.encode(text);
        out.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * sizeof(ids[0])));
      }
    }
    nlohmann::json result{{"impl", "slearn"},           {"texts", texts.size()}, {"bytes", bytes},
                          {"tokens", tokens},           {"seconds", best},
                          {"mb_per_s", static_cast<double>(bytes) / 1e6 / best},
                          {"cold_mb_per_s", static_cast<double>(bytes) / 1e6 / cold}};
    std::cout << result.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_tokenizer: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}

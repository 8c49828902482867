// The Communicator over MPI_COMM_WORLD, or a group split from it (Open MPI 4.1, MPI 3.1). Every call is a
// collective: all ranks make the same calls in the same order. MPI is initialised with MPI_THREAD_FUNNELED, so only the thread that
// created the MpiSession may call these. Errors come back as return codes (MPI_ERRORS_RETURN) and are thrown
// as slearn::Error by SLEARN_MPI_CHECK.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string_view>

#include "dist/mpi_check.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace mpi {

std::string short_source_path(const char* file) {
  const std::string_view path = file == nullptr ? std::string_view() : std::string_view(file);
  std::size_t start = std::string_view::npos;
  for (const std::string_view root : {std::string_view("/src/"), std::string_view("/tests/")}) {
    const std::size_t at = path.rfind(root);
    if (at != std::string_view::npos && (start == std::string_view::npos || at + 1 > start)) start = at + 1;
  }
  if (start == std::string_view::npos) start = 0;  // relative already ("src/..."), or elsewhere
  return std::string(path.substr(start));
}

std::string error_text(int code) {
  char text[MPI_MAX_ERROR_STRING + 1] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS || length <= 0)
    return "MPI error code " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(std::min(length, MPI_MAX_ERROR_STRING)));
}

void check(int code, const char* call, std::source_location where) {
  if (code == MPI_SUCCESS) return;
  std::string_view name = call == nullptr ? std::string_view("MPI call") : std::string_view(call);
  if (const auto paren = name.find('('); paren != std::string_view::npos) name = name.substr(0, paren);
  while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
  while (!name.empty() && name.front() == ':') name.remove_prefix(1);  // ::MPI_Bcast
  throw Error(std::string(name) + " failed: " + error_text(code) + " (" + short_source_path(where.file_name()) +
                  ":" + std::to_string(where.line()) + ")",
              where);
}

}  // namespace mpi

namespace {

// MPI counts are ints: larger buffers go in pieces of this many elements.
constexpr std::size_t kMaxChunk = static_cast<std::size_t>(1) << 30;

template <class T>
MPI_Datatype datatype_of();
template <>
MPI_Datatype datatype_of<float>() { return MPI_FLOAT; }
template <>
MPI_Datatype datatype_of<double>() { return MPI_DOUBLE; }
template <>
MPI_Datatype datatype_of<std::int64_t>() { return MPI_INT64_T; }
template <>
MPI_Datatype datatype_of<std::int32_t>() { return MPI_INT32_T; }

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    SLEARN_MPI_CHECK(MPI_Initialized(&initialized));
    int finalized = 0;
    SLEARN_MPI_CHECK(MPI_Finalized(&finalized));
    if (initialized == 0 || finalized != 0)
      throw Error(finalized != 0 ? "MPI communicator: MPI has already been finalised"
                                 : "MPI communicator: MPI is not initialised (hold an MpiSession first)");
    comm_ = MPI_COMM_WORLD;
    SLEARN_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    SLEARN_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    SLEARN_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  // Takes ownership of `comm` (from MPI_Comm_split): freed with the communicator.
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm), owned_(true) {
    SLEARN_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    SLEARN_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    SLEARN_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    if (owned_ && MPI_Finalized(&finalized) == MPI_SUCCESS && finalized == 0) MPI_Comm_free(&comm_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce_sum(std::span<float> values) override { sum_in_place(values); }
  void allreduce_sum(std::span<double> values) override { sum_in_place(values); }
  void allreduce_sum(std::span<std::int64_t> values) override { sum_in_place(values); }

  std::vector<std::int64_t> allgather(std::span<const std::int64_t> values) override {
    if (values.size() > static_cast<std::size_t>(INT_MAX))
      throw Error("MPI allgather: " + std::to_string(values.size()) + " values on rank " + std::to_string(rank_) +
                  " are more than one MPI call can carry (" + std::to_string(INT_MAX) + ")");
    const int count = static_cast<int>(values.size());
    std::vector<int> counts(static_cast<std::size_t>(size_), 0);
    SLEARN_MPI_CHECK(MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_));
    std::vector<int> offsets(counts.size(), 0);
    std::int64_t total = 0;
    for (std::size_t r = 0; r < counts.size(); ++r) {
      if (counts[r] < 0) throw Error("MPI allgather: rank " + std::to_string(r) + " reported a negative count");
      if (total + counts[r] > INT_MAX)
        throw Error("MPI allgather: the gathered values are more than one MPI call can carry (" +
                    std::to_string(INT_MAX) + ")");
      offsets[r] = static_cast<int>(total);
      total += counts[r];
    }
    std::vector<std::int64_t> gathered(static_cast<std::size_t>(total));
    // An empty span may have no storage; MPI still wants a valid address.
    std::int64_t unused = 0;
    const void* send = values.empty() ? static_cast<const void*>(&unused) : static_cast<const void*>(values.data());
    void* receive = gathered.empty() ? static_cast<void*>(&unused) : static_cast<void*>(gathered.data());
    SLEARN_MPI_CHECK(MPI_Allgatherv(send, count, MPI_INT64_T, receive, counts.data(), offsets.data(), MPI_INT64_T,
                                    comm_));
    return gathered;
  }

  void broadcast(std::string& text, int root) override {
    if (root < 0 || root >= size_)
      throw Error("MPI broadcast: root " + std::to_string(root) + " is not a rank (there are " +
                  std::to_string(size_) + ")");
    std::uint64_t length = rank_ == root ? static_cast<std::uint64_t>(text.size()) : 0;
    SLEARN_MPI_CHECK(MPI_Bcast(&length, 1, MPI_UINT64_T, root, comm_));
    if (rank_ != root) text.assign(static_cast<std::size_t>(length), '\0');
    for (std::size_t done = 0; done < text.size();) {
      const std::size_t piece = std::min(kMaxChunk, text.size() - done);
      SLEARN_MPI_CHECK(MPI_Bcast(text.data() + done, static_cast<int>(piece), MPI_CHAR, root, comm_));
      done += piece;
    }
  }

  bool any(bool flag) override {
    int local = flag ? 1 : 0;
    int result = 0;
    SLEARN_MPI_CHECK(MPI_Allreduce(&local, &result, 1, MPI_INT, MPI_LOR, comm_));
    return result != 0;
  }

  void barrier() override { SLEARN_MPI_CHECK(MPI_Barrier(comm_)); }

  std::unique_ptr<Communicator> split(int color, int key) override {
    if (color < 0) throw Error("MPI split: color " + std::to_string(color) + " on rank " + std::to_string(rank_) +
                               " is negative");
    MPI_Comm part = MPI_COMM_NULL;
    SLEARN_MPI_CHECK(MPI_Comm_split(comm_, color, key, &part));
    return std::make_unique<MpiCommunicator>(part);
  }

  void allgather(std::span<const float> values, std::span<float> out) override {
    if (out.size() != values.size() * static_cast<std::size_t>(size_))
      throw Error("MPI allgather: " + std::to_string(out.size()) + " places for " + std::to_string(size_) +
                  " ranks of " + std::to_string(values.size()) + " values on rank " + std::to_string(rank_));
    if (values.size() > kMaxChunk)
      throw Error("MPI allgather: " + std::to_string(values.size()) + " floats a rank are more than one MPI call "
                  "carries");
    if (values.empty()) return;
    SLEARN_MPI_CHECK(MPI_Allgather(values.data(), static_cast<int>(values.size()), MPI_FLOAT, out.data(),
                                   static_cast<int>(values.size()), MPI_FLOAT, comm_));
  }

  void broadcast(std::span<float> values, int root) override { broadcast_values(values, root); }
  void broadcast(std::span<std::int32_t> values, int root) override { broadcast_values(values, root); }

 private:
  // Every rank must pass the same number of values (as with any MPI reduction).
  template <class T>
  void sum_in_place(std::span<T> values) {
    if (size_ == 1) return;
    for (std::size_t done = 0; done < values.size();) {
      const std::size_t piece = std::min(kMaxChunk, values.size() - done);
      SLEARN_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, values.data() + done, static_cast<int>(piece), datatype_of<T>(),
                                     MPI_SUM, comm_));
      done += piece;
    }
  }

  template <class T>
  void broadcast_values(std::span<T> values, int root) {
    if (root < 0 || root >= size_)
      throw Error("MPI broadcast: root " + std::to_string(root) + " is not a rank (there are " +
                  std::to_string(size_) + ")");
    for (std::size_t done = 0; done < values.size();) {
      const std::size_t piece = std::min(kMaxChunk, values.size() - done);
      SLEARN_MPI_CHECK(MPI_Bcast(values.data() + done, static_cast<int>(piece), datatype_of<T>(), root, comm_));
      done += piece;
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  SLEARN_MPI_CHECK(MPI_Initialized(&initialized));
  if (initialized != 0) return;  // someone else owns MPI
  int finalized = 0;
  SLEARN_MPI_CHECK(MPI_Finalized(&finalized));
  if (finalized != 0) throw Error("MpiSession: MPI has already been finalised and cannot start again");
  int provided = 0;
  SLEARN_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  owns_ = true;
  try {
    if (provided < MPI_THREAD_FUNNELED)
      throw Error("MpiSession: the MPI library offers no thread support (MPI_THREAD_FUNNELED needed, got level " +
                  std::to_string(provided) + ")");
    SLEARN_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  } catch (...) {
    MPI_Finalize();
    owns_ = false;
    throw;
  }
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  int finalized = 0;
  if (MPI_Finalized(&finalized) == MPI_SUCCESS && finalized == 0) MPI_Finalize();
}

void MpiSession::abort_job(int exit_code) {
  int initialized = 0, finalized = 0, size = 1;
  if (MPI_Initialized(&initialized) != MPI_SUCCESS || initialized == 0) return;
  if (MPI_Finalized(&finalized) != MPI_SUCCESS || finalized != 0) return;
  if (MPI_Comm_size(MPI_COMM_WORLD, &size) != MPI_SUCCESS || size <= 1) return;
  MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace slearn

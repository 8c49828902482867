// What the trainer and pipeline need from the processes around them: rank, size, and sums across ranks.
// A single process is the trivial case; MPI (and NCCL for GPU tensors) implement the same interface, so a CPU
// run does over MPI what a GPU run does over NCCL.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace slearn {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank ends with the element-wise sum over all ranks.
  virtual void allreduce_sum(std::span<float> values) = 0;
  virtual void allreduce_sum(std::span<double> values) = 0;
  virtual void allreduce_sum(std::span<std::int64_t> values) = 0;
  // Every rank's values concatenated in rank order, on every rank (the counts may differ per rank).
  virtual std::vector<std::int64_t> allgather(std::span<const std::int64_t> values) = 0;
  // `text` from `root` replaces every other rank's.
  virtual void broadcast(std::string& text, int root) = 0;
  // The logical OR of `flag` over all ranks (used to agree on stopping).
  virtual bool any(bool flag) = 0;
  virtual void barrier() = 0;

  // ---- Groups (a tensor-parallel mesh: src/dist/mesh.hpp) ----
  // Collective: the ranks that pass the same `color` form one new communicator, ranked by `key` (ties by
  // this communicator's rank). The result lives on its own; it may outlive nothing it was split from but
  // the process's MPI session.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Every rank's `values` (the same count on every rank) concatenated in rank order into `out`
  // (size() times as many).
  virtual void allgather(std::span<const float> values, std::span<float> out) = 0;
  // `values` from `root` replaces every other rank's (the same count on every rank).
  virtual void broadcast(std::span<float> values, int root) = 0;
  virtual void broadcast(std::span<std::int32_t> values, int root) = 0;
};

std::unique_ptr<Communicator> make_single_process_communicator();

// MPI_COMM_WORLD (MPI must be initialised, see MpiSession); errors from MPI throw slearn::Error naming the
// call, file and line.
std::unique_ptr<Communicator> make_mpi_communicator();

// Initialises MPI for the life of the object (MPI_Init_thread, MPI_THREAD_FUNNELED) and finalises it; when
// MPI is already initialised it does nothing. MPI errors are returned (MPI_ERRORS_RETURN), never abort.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  // Ends the whole job now with `exit_code` (MPI_Abort) when it has more than one rank; returns otherwise.
  // For a failure on some ranks only, where finalising would wait for ranks stuck in a collective.
  void abort_job(int exit_code);

 private:
  bool owns_ = false;
};

}  // namespace slearn

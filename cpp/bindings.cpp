// The only translation unit that knows Python: adapts igw's C++ core to igw._core.
// Shapes and dtypes are checked here, with the GIL held, before any GIL release; the core
// itself takes spans and plain structs. Every core failure is igw::Error -> igw._core.Error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "endpoint_table.h"
#include "hash.h"
#include "prefix_index.h"
#include "scheduler.h"

namespace py = pybind11;
using namespace igw;

#define IGW_STRINGIFY(x) #x
#define IGW_MACRO_STRINGIFY(x) IGW_STRINGIFY(x)

namespace {

// numpy arrays must already have the exact dtype: silently converting a float64 score array
// or an int64 hash array would hide caller bugs, so we refuse with a clear message.
template <class T>
py::array_t<T, py::array::c_style> require_array(const py::handle& obj, const char* name,
                                                 int ndim, const char* dtype) {
  if (!py::isinstance<py::array>(obj))
    throw Error(std::string(name) + " must be a numpy " + dtype + " array, got " +
                std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().is(py::dtype::of<T>()))
    throw Error(std::string(name) + " must have dtype " + dtype + ", got " +
                std::string(py::str(arr.dtype())));
  if (arr.ndim() != ndim)
    throw Error(std::string(name) + " must be " + std::to_string(ndim) + "-d, got " +
                std::to_string(arr.ndim()) + "-d");
  return py::array_t<T, py::array::c_style>::ensure(arr);  // copies only if non-contiguous
}

uint32_t endpoint_arg(int64_t endpoint, const char* what) {
  if (endpoint < 0 || endpoint > static_cast<int64_t>(kMaxEndpoints))
    throw Error(std::string(what) + ": endpoint " + std::to_string(endpoint) +
                " is not a valid endpoint id");
  return static_cast<uint32_t>(endpoint);
}

std::span<const uint8_t> bytes_view(const py::buffer& data, py::buffer_info& info) {
  info = data.request();
  py::ssize_t expect = info.itemsize;  // C-contiguous: each stride is the size of the rest
  for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
    if (info.shape[i] > 1 && info.strides[i] != expect)
      throw Error("data must be a contiguous buffer (bytes, bytearray or a contiguous view)");
    expect *= info.shape[i];
  }
  return {static_cast<const uint8_t*>(info.ptr), static_cast<size_t>(info.size * info.itemsize)};
}

py::array_t<uint64_t> hash_bytes(std::span<const uint8_t> d, int64_t block, uint64_t seed,
                                 int64_t max_blocks, const char* name) {
  if (block < 1) throw Error(std::string(name) + " must be >= 1, got " + std::to_string(block));
  if (max_blocks < 0) throw Error("max_blocks must be >= 0, got " + std::to_string(max_blocks));
  const size_t n = block_count(d.size(), static_cast<size_t>(block), static_cast<size_t>(max_blocks));
  py::array_t<uint64_t> out(static_cast<py::ssize_t>(n));
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    hash_blocks(d, static_cast<size_t>(block), seed, static_cast<size_t>(max_blocks), {o, n});
  }
  return out;
}

struct PyPickResult {
  py::list endpoints;
  py::array_t<int32_t> matched_blocks;
  int64_t total_blocks;
  int64_t uncached_tokens;
  py::object scores;
};

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

PyPickResult pick(Scheduler& self, const Profile& profile, const py::object& hashes,
                  const py::object& prompt, int64_t block_bytes, uint64_t seed,
                  int64_t max_blocks, int64_t prompt_tokens, int64_t block_tokens, int lora,
                  const py::object& candidates, int64_t k, const py::object& extra_scores,
                  const py::object& extra_weights, bool reserve, bool record,
                  bool with_scores) {
  PickRequest req;
  py::array_t<uint64_t, py::array::c_style> h;
  std::vector<uint64_t> own_hashes;
  py::buffer_info prompt_info;
  std::span<const uint8_t> prompt_bytes;
  const bool has_prompt = !prompt.is_none();
  if (has_prompt) {
    if (!hashes.is_none()) throw Error("pass either hashes or prompt, not both");
    if (!py::isinstance<py::buffer>(prompt)) throw Error("prompt must be bytes");
    if (block_bytes < 1) throw Error("block_bytes must be >= 1, got " + std::to_string(block_bytes));
    if (max_blocks < 0) throw Error("max_blocks must be >= 0, got " + std::to_string(max_blocks));
    prompt_bytes = bytes_view(py::reinterpret_borrow<py::buffer>(prompt), prompt_info);
  } else if (!hashes.is_none()) {
    h = require_array<uint64_t>(hashes, "hashes", 1, "uint64");
    req.hashes = {h.data(), static_cast<size_t>(h.shape(0))};
  }
  py::array_t<bool, py::array::c_style> cand;
  if (!candidates.is_none()) {
    cand = require_array<bool>(candidates, "candidates", 1, "bool");
    const auto hw = self.table()->high_water();
    if (cand.shape(0) < static_cast<py::ssize_t>(hw))
      throw Error("candidates has length " + std::to_string(cand.shape(0)) +
                  ", expected >= high_water " + std::to_string(hw));
    req.candidates = {cand.data(), static_cast<size_t>(cand.shape(0))};
    req.has_candidates = true;
  }
  py::array_t<float, py::array::c_style> extra;
  std::vector<double> weights;
  if (extra_scores.is_none() != extra_weights.is_none())
    throw Error("extra_scores and extra_weights must be given together");
  if (!extra_scores.is_none()) {
    extra = require_array<float>(extra_scores, "extra_scores", 2, "float32");
    try {
      weights = extra_weights.cast<std::vector<double>>();
    } catch (const py::cast_error&) {
      throw Error("extra_weights must be a list of numbers");
    }
    const auto hw = self.table()->high_water();
    if (extra.shape(0) != static_cast<py::ssize_t>(weights.size()) ||
        extra.shape(1) < static_cast<py::ssize_t>(hw))
      throw Error("extra_scores has shape (" + std::to_string(extra.shape(0)) + ", " +
                  std::to_string(extra.shape(1)) + "), expected (" +
                  std::to_string(weights.size()) + ", >= " + std::to_string(hw) + ")");
    req.extra = extra.data();
    req.extra_rows = static_cast<size_t>(extra.shape(0));
    req.extra_stride = static_cast<size_t>(extra.shape(1));
    req.extra_weights = weights;
  }
  if (k < 1 || k > kMaxEndpoints) throw Error("k must be in 1..65535, got " + std::to_string(k));
  req.k = static_cast<uint32_t>(k);
  req.prompt_tokens = prompt_tokens;
  req.block_tokens = block_tokens;
  req.lora = lora < 0 ? -1 : lora;
  req.reserve = reserve;
  req.record = record;
  req.with_scores = with_scores;
  PickOutput out;
  {
    py::gil_scoped_release release;
    if (has_prompt) {
      own_hashes.resize(block_count(prompt_bytes.size(), static_cast<size_t>(block_bytes),
                                    static_cast<size_t>(max_blocks)));
      hash_blocks(prompt_bytes, static_cast<size_t>(block_bytes), seed,
                  static_cast<size_t>(max_blocks), own_hashes);
      req.hashes = own_hashes;
    }
    self.pick(profile, req, out);
  }
  PyPickResult r;
  for (uint32_t e : out.endpoints) r.endpoints.append(e);
  r.matched_blocks = to_numpy(out.matched);
  r.total_blocks = out.total_blocks;
  r.uncached_tokens = out.uncached_tokens;
  if (with_scores) {
    py::dict d;
    size_t row = 0;
    for (const auto& s : profile.scorers()) d[py::str(s.type)] = to_numpy(out.scores[row++]);
    for (size_t j = 0; j < req.extra_rows; ++j)
      d[py::str("extra[" + std::to_string(j) + "]")] = to_numpy(out.scores[row++]);
    d["total"] = to_numpy(out.scores[row]);
    r.scores = d;
  } else {
    r.scores = py::none();
  }
  return r;
}

py::object snapshot(const EndpointTable& t) {
  const auto n = static_cast<py::ssize_t>(t.high_water());
  py::array_t<bool> active(n), ready(n);
  py::array_t<int32_t> waiting(n), running(n), block_size(n), max_lora(n), inflight_requests(n);
  py::array_t<float> kv_util(n), prefill_rate(n);
  py::array_t<int64_t> kv_blocks(n), inflight_tokens(n);
  py::array_t<double> updated_at(n);
  py::array_t<uint64_t> lora_active({n, py::ssize_t{4}}), lora_waiting({n, py::ssize_t{4}});
  SnapshotOut o{static_cast<size_t>(n), active.mutable_data(), ready.mutable_data(),
                waiting.mutable_data(), running.mutable_data(), kv_util.mutable_data(),
                kv_blocks.mutable_data(), block_size.mutable_data(), max_lora.mutable_data(),
                lora_active.mutable_data(), lora_waiting.mutable_data(),
                inflight_requests.mutable_data(), inflight_tokens.mutable_data(),
                updated_at.mutable_data(), prefill_rate.mutable_data()};
  {
    py::gil_scoped_release release;
    t.snapshot(o);
  }
  py::object cls = py::module_::import("igw._core").attr("Snapshot");
  py::object s = cls();
  s.attr("active") = active;
  s.attr("ready") = ready;
  s.attr("waiting") = waiting;
  s.attr("running") = running;
  s.attr("kv_util") = kv_util;
  s.attr("kv_blocks") = kv_blocks;
  s.attr("block_size") = block_size;
  s.attr("max_lora") = max_lora;
  s.attr("lora_active") = lora_active;
  s.attr("lora_waiting") = lora_waiting;
  s.attr("inflight_requests") = inflight_requests;
  s.attr("inflight_tokens") = inflight_tokens;
  s.attr("updated_at") = updated_at;
  s.attr("prefill_rate") = prefill_rate;
  return s;
}

std::optional<std::vector<int>> adapter_list(const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  try {
    return obj.cast<std::vector<int>>();
  } catch (const py::cast_error&) {
    throw Error(std::string(name) + " must be a list of adapter ids (int)");
  }
}

using ScorerTuple =
    std::tuple<std::string, double, std::vector<std::pair<std::string, double>>>;

std::vector<ScorerTuple> scorer_list(const py::object& scorers) {
  std::vector<ScorerTuple> out;
  if (!py::isinstance<py::sequence>(scorers) || py::isinstance<py::str>(scorers))
    throw Error("scorers must be a list of (type, weight, params) tuples");
  size_t n = 0;
  for (const auto& item : scorers) {
    const std::string where = "scorers[" + std::to_string(n++) + "]";
    if (!py::isinstance<py::sequence>(item) || py::len(item) != 3 || py::isinstance<py::str>(item))
      throw Error(where + " must be a (type, weight, params) tuple");
    auto seq = py::reinterpret_borrow<py::sequence>(item);
    if (!py::isinstance<py::str>(seq[0])) throw Error(where + ": type must be a str");
    ScorerTuple t;
    std::get<0>(t) = seq[0].cast<std::string>();
    try {
      std::get<1>(t) = py::float_(seq[1]).cast<double>();
    } catch (const py::error_already_set&) {
      throw Error(where + " (" + std::get<0>(t) + "): weight must be a number");
    }
    py::object params = seq[2];
    if (!params.is_none()) {
      if (!py::isinstance<py::dict>(params)) throw Error(where + ": params must be a dict");
      for (auto [key, value] : py::reinterpret_borrow<py::dict>(params)) {
        if (!py::isinstance<py::str>(key)) throw Error(where + ": parameter names must be str");
        double v;
        try {
          v = py::float_(py::reinterpret_borrow<py::object>(value)).cast<double>();
        } catch (const py::error_already_set&) {
          throw Error(std::get<0>(t) + ": parameter " + key.cast<std::string>() +
                      " must be a number");
        }
        std::get<2>(t).emplace_back(key.cast<std::string>(), v);
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

// pick() takes 16 keyword-only arguments. pybind11's generic keyword matching looks every
// declared name up in the kwargs dict (a temporary str per name, ~1.3 us per call); this
// shim walks only the keywords actually passed. Same names, defaults and errors as the
// signature in _core.pyi.
template <class T>
T kwarg_as(const py::handle& value, const char* name, const char* expected) {
  if constexpr (std::is_same_v<T, bool>) {
    const std::string_view type = Py_TYPE(value.ptr())->tp_name;
    if (PyBool_Check(value.ptr())) return value.ptr() == Py_True;
    if (type == "numpy.bool_" || type == "numpy.bool") return PyObject_IsTrue(value.ptr()) == 1;
    throw Error(std::string(name) + " must be " + expected);
  } else {
    // Python ints and anything with __index__ (numpy integers); not bools or floats.
    if (PyBool_Check(value.ptr()) || !PyIndex_Check(value.ptr()))
      throw Error(std::string(name) + " must be " + expected);
    try {
      return value.cast<T>();
    } catch (const py::cast_error&) {
      throw Error(std::string(name) + " must be " + expected);
    }
  }
}

PyPickResult pick_kwargs(Scheduler& self, const Profile& profile, const py::kwargs& kw) {
  py::object hashes = py::none(), prompt = py::none(), candidates = py::none();
  py::object extra_scores = py::none(), extra_weights = py::none();
  int64_t block_bytes = 256, max_blocks = 0, prompt_tokens = 0, block_tokens = 64, k = 1;
  uint64_t seed = 0;
  int lora = -1;
  bool reserve = true, record = true, with_scores = false;
  for (auto item : kw) {
    Py_ssize_t len = 0;
    const char* key = PyUnicode_AsUTF8AndSize(item.first.ptr(), &len);
    if (!key) throw py::error_already_set();
    const std::string_view name(key, static_cast<size_t>(len));
    const py::handle v = item.second;
    if (name == "hashes") hashes = py::reinterpret_borrow<py::object>(v);
    else if (name == "prompt") prompt = py::reinterpret_borrow<py::object>(v);
    else if (name == "candidates") candidates = py::reinterpret_borrow<py::object>(v);
    else if (name == "extra_scores") extra_scores = py::reinterpret_borrow<py::object>(v);
    else if (name == "extra_weights") extra_weights = py::reinterpret_borrow<py::object>(v);
    else if (name == "block_bytes") block_bytes = kwarg_as<int64_t>(v, key, "an int");
    else if (name == "max_blocks") max_blocks = kwarg_as<int64_t>(v, key, "an int");
    else if (name == "prompt_tokens") prompt_tokens = kwarg_as<int64_t>(v, key, "an int");
    else if (name == "block_tokens") block_tokens = kwarg_as<int64_t>(v, key, "an int");
    else if (name == "k") k = kwarg_as<int64_t>(v, key, "an int");
    else if (name == "seed") seed = kwarg_as<uint64_t>(v, key, "an int in 0..2**64-1");
    else if (name == "lora") lora = kwarg_as<int>(v, key, "an adapter id (int)");
    else if (name == "reserve") reserve = kwarg_as<bool>(v, key, "a bool");
    else if (name == "record") record = kwarg_as<bool>(v, key, "a bool");
    else if (name == "with_scores") with_scores = kwarg_as<bool>(v, key, "a bool");
    else throw Error("pick() got an unexpected keyword argument '" + std::string(name) + "'");
  }
  return pick(self, profile, hashes, prompt, block_bytes, seed, max_blocks, prompt_tokens,
              block_tokens, lora, candidates, k, extra_scores, extra_weights, reserve, record,
              with_scores);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "igw performance core: endpoint table, prefix index, scheduler (see _core.pyi)";
  m.attr("__version__") = IGW_MACRO_STRINGIFY(VERSION_INFO);
  py::register_exception<Error>(m, "Error", PyExc_Exception);

  // Snapshot is a plain attribute bag filled by EndpointTable.snapshot.
  py::object types = py::module_::import("types");
  m.attr("Snapshot") = py::module_::import("builtins").attr("type")(
      "Snapshot", py::make_tuple(types.attr("SimpleNamespace")),
      py::dict(py::arg("__doc__") = "A consistent copy of every endpoint's metrics.",
               py::arg("__module__") = "igw._core"));

  py::class_<EndpointTable, std::shared_ptr<EndpointTable>> table(m, "EndpointTable");
  py::class_<PrefixIndex, std::shared_ptr<PrefixIndex>> index(m, "PrefixIndex");
  py::class_<Profile> profile(m, "Profile");
  py::class_<PyPickResult> result(m, "PickResult");
  py::class_<Scheduler> scheduler(m, "Scheduler");

  m.def(
      "xxh64",
      [](const py::buffer& data, uint64_t seed) {
        py::buffer_info info;
        auto d = bytes_view(data, info);
        return xxh64(d.data(), d.size(), seed);
      },
      py::arg("data"), py::arg("seed") = 0);
  m.def(
      "model_seed",
      [](const std::string& model, const std::string& salt, const std::string& lora) {
        return model_seed(model, salt, lora);
      },
      py::arg("model"), py::arg("cache_salt") = "", py::arg("lora") = "");
  m.def(
      "hash_blocks",
      [](const py::buffer& data, int64_t block_bytes, uint64_t seed, int64_t max_blocks) {
        py::buffer_info info;
        return hash_bytes(bytes_view(data, info), block_bytes, seed, max_blocks, "block_bytes");
      },
      py::arg("data"), py::arg("block_bytes"), py::arg("seed"), py::arg("max_blocks") = 0);
  m.def(
      "hash_token_blocks",
      [](const py::object& tokens, int64_t block_tokens, uint64_t seed, int64_t max_blocks) {
        auto t = require_array<uint32_t>(tokens, "tokens", 1, "uint32");
        if (block_tokens < 1)
          throw Error("block_tokens must be >= 1, got " + std::to_string(block_tokens));
        std::span<const uint8_t> d{reinterpret_cast<const uint8_t*>(t.data()),
                                   static_cast<size_t>(t.shape(0)) * 4};
        return hash_bytes(d, block_tokens * 4, seed, max_blocks, "block_tokens");
      },
      py::arg("tokens"), py::arg("block_tokens"), py::arg("seed"), py::arg("max_blocks") = 0);

  table
      .def(py::init([](int64_t capacity) {
             if (capacity < 1 || capacity > kMaxEndpoints)
               throw Error("capacity must be in 1..65535, got " + std::to_string(capacity));
             return std::make_shared<EndpointTable>(static_cast<uint32_t>(capacity));
           }),
           py::arg("capacity") = 4096)
      .def_property_readonly("capacity", &EndpointTable::capacity)
      .def_property_readonly("high_water", &EndpointTable::high_water)
      .def("__len__", &EndpointTable::size)
      .def("add", &EndpointTable::add)
      .def("remove", [](EndpointTable& t, int64_t e) { t.remove(endpoint_arg(e, "remove")); },
           py::arg("endpoint"))
      .def("is_live", &EndpointTable::is_live, py::arg("endpoint"))
      .def(
          "update",
          [](EndpointTable& t, int64_t e, int64_t waiting, int64_t running, double kv_util,
             double now, int64_t kv_blocks, int64_t block_size, int64_t max_lora,
             const py::object& lora_active, const py::object& lora_waiting) {
            if (waiting < 0 || running < 0 || waiting > INT32_MAX || running > INT32_MAX)
              throw Error("waiting and running must be in 0..2^31-1, got " +
                          std::to_string(waiting) + ", " + std::to_string(running));
            auto act = adapter_list(lora_active, "lora_active");
            auto wai = adapter_list(lora_waiting, "lora_waiting");
            MetricsUpdate u{static_cast<int32_t>(waiting), static_cast<int32_t>(running),
                            kv_util, now, kv_blocks, block_size, max_lora,
                            act ? &*act : nullptr, wai ? &*wai : nullptr};
            t.update(endpoint_arg(e, "update"), u);
          },
          py::arg("endpoint"), py::kw_only(), py::arg("waiting"), py::arg("running"),
          py::arg("kv_util"), py::arg("now"), py::arg("kv_blocks") = -1,
          py::arg("block_size") = -1, py::arg("max_lora") = -1,
          py::arg("lora_active") = py::none(), py::arg("lora_waiting") = py::none())
      .def("set_ready",
           [](EndpointTable& t, int64_t e, bool r) { t.set_ready(endpoint_arg(e, "set_ready"), r); },
           py::arg("endpoint"), py::arg("ready"))
      .def("set_prefill_rate",
           [](EndpointTable& t, int64_t e, double r) {
             t.set_prefill_rate(endpoint_arg(e, "set_prefill_rate"), r);
           },
           py::arg("endpoint"), py::arg("tokens_per_second"))
      .def("add_inflight",
           [](EndpointTable& t, int64_t e, int64_t req, int64_t tok) {
             t.add_inflight(endpoint_arg(e, "add_inflight"), req, tok);
           },
           py::arg("endpoint"), py::arg("requests"), py::arg("tokens"))
      .def("adapter_id", &EndpointTable::adapter_id, py::arg("name"))
      .def("adapter_name", &EndpointTable::adapter_name, py::arg("adapter"))
      .def("snapshot", &snapshot);

  auto index_endpoint = [](const PrefixIndex& ix, int64_t e, const char* what) {
    if (e < 0 || e >= static_cast<int64_t>(ix.max_endpoints()))
      throw Error(std::string(what) + ": endpoint " + std::to_string(e) + " out of range 0.." +
                  std::to_string(ix.max_endpoints() - 1));
    return static_cast<uint32_t>(e);
  };
  index
      .def(py::init([](int64_t max_endpoints, int64_t default_capacity) {
             if (max_endpoints < 1 || max_endpoints > kMaxEndpoints)
               throw Error("max_endpoints must be in 1..65535, got " +
                           std::to_string(max_endpoints));
             if (default_capacity < 0 || default_capacity > UINT32_MAX)
               throw Error("default_capacity must be >= 0, got " +
                           std::to_string(default_capacity));
             return std::make_shared<PrefixIndex>(static_cast<uint32_t>(max_endpoints),
                                                  static_cast<uint32_t>(default_capacity));
           }),
           py::arg("max_endpoints") = 4096, py::arg("default_capacity") = 31250)
      .def("set_capacity",
           [=](PrefixIndex& ix, int64_t e, int64_t blocks) {
             if (blocks < 0 || blocks > UINT32_MAX)
               throw Error("blocks must be >= 0, got " + std::to_string(blocks));
             auto ep = index_endpoint(ix, e, "set_capacity");
             py::gil_scoped_release release;
             ix.set_capacity(ep, static_cast<uint32_t>(blocks));
           },
           py::arg("endpoint"), py::arg("blocks"))
      .def("capacity_of",
           [=](const PrefixIndex& ix, int64_t e) {
             return ix.capacity_of(index_endpoint(ix, e, "capacity_of"));
           },
           py::arg("endpoint"))
      .def("record",
           [=](PrefixIndex& ix, int64_t e, const py::object& hashes) {
             auto ep = index_endpoint(ix, e, "record");
             auto h = require_array<uint64_t>(hashes, "hashes", 1, "uint64");
             std::span<const uint64_t> s{h.data(), static_cast<size_t>(h.shape(0))};
             py::gil_scoped_release release;
             ix.record(ep, s);
           },
           py::arg("endpoint"), py::arg("hashes"))
      .def("match",
           [](const PrefixIndex& ix, const py::object& hashes) {
             auto h = require_array<uint64_t>(hashes, "hashes", 1, "uint64");
             std::span<const uint64_t> s{h.data(), static_cast<size_t>(h.shape(0))};
             py::array_t<int32_t> out(static_cast<py::ssize_t>(ix.seen()));
             std::span<int32_t> o{out.mutable_data(), static_cast<size_t>(out.shape(0))};
             py::gil_scoped_release release;
             ix.match(s, o);
             return out;
           },
           py::arg("hashes"))
      .def("remove_endpoint",
           [=](PrefixIndex& ix, int64_t e) {
             auto ep = index_endpoint(ix, e, "remove_endpoint");
             py::gil_scoped_release release;
             ix.remove_endpoint(ep);
           },
           py::arg("endpoint"))
      .def("entries", &PrefixIndex::entries)
      .def("blocks", &PrefixIndex::blocks)
      .def("endpoint_entries",
           [=](const PrefixIndex& ix, int64_t e) {
             return ix.endpoint_entries(index_endpoint(ix, e, "endpoint_entries"));
           },
           py::arg("endpoint"))
      .def("memory_bytes", &PrefixIndex::memory_bytes);

  profile
      .def(py::init([](const py::object& scorers, const std::string& picker) {
             return Profile(scorer_list(scorers), picker);
           }),
           py::arg("scorers"), py::arg("picker") = "max-score-picker")
      .def_property_readonly("scorer_types", &Profile::scorer_types)
      .def_property_readonly("picker", [](const Profile& p) {
        switch (p.picker()) {
          case PickerKind::MaxScore: return "max-score-picker";
          case PickerKind::WeightedRandom: return "weighted-random-picker";
          case PickerKind::Random: return "random-picker";
        }
        return "";
      });

  result.def_readonly("endpoints", &PyPickResult::endpoints)
      .def_readonly("matched_blocks", &PyPickResult::matched_blocks)
      .def_readonly("total_blocks", &PyPickResult::total_blocks)
      .def_readonly("uncached_tokens", &PyPickResult::uncached_tokens)
      .def_readonly("scores", &PyPickResult::scores)
      .def("__repr__", [](const PyPickResult& r) {
        return "PickResult(endpoints=" + std::string(py::repr(r.endpoints)) +
               ", total_blocks=" + std::to_string(r.total_blocks) +
               ", uncached_tokens=" + std::to_string(r.uncached_tokens) + ")";
      });

  scheduler
      .def(py::init([](std::shared_ptr<EndpointTable> t, std::shared_ptr<PrefixIndex> ix,
                       uint64_t seed) { return std::make_unique<Scheduler>(t, ix, seed); }),
           py::arg("table"), py::arg("index"), py::arg("seed") = 0)
      .def("pick", &pick_kwargs, py::arg("profile"),
           "pick(profile, *, hashes=None, prompt=None, block_bytes=256, seed=0, max_blocks=0, "
           "prompt_tokens=0, block_tokens=64, lora=-1, candidates=None, k=1, "
           "extra_scores=None, extra_weights=None, reserve=True, record=True, "
           "with_scores=False) -> PickResult (see _core.pyi)");
}

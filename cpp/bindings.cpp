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

// ---- scalar arguments. Every parameter is taken as a Python object and converted here, so
// a wrong type raises igw._core.Error naming the argument and the expected type (pybind11's
// own casters would raise TypeError "incompatible function arguments" naming neither).
std::string type_name(py::handle v) { return Py_TYPE(v.ptr())->tp_name; }

[[noreturn]] void wrong_type(const char* name, const char* expected, py::handle v) {
  throw Error(std::string(name) + " must be " + expected + ", got " + type_name(v));
}

bool is_bool_like(py::handle v) {
  if (PyBool_Check(v.ptr())) return true;
  const std::string_view t = Py_TYPE(v.ptr())->tp_name;
  return t == "numpy.bool_" || t == "numpy.bool";
}

// Python ints and integer scalars with __index__ (numpy.int64 ...); not bools, not arrays.
bool is_int_like(py::handle v) {
  if (PyLong_Check(v.ptr())) return !PyBool_Check(v.ptr());
  return PyIndex_Check(v.ptr()) && !is_bool_like(v) && !py::isinstance<py::array>(v);
}

py::object as_index(py::handle v, const char* name) {
  if (!is_int_like(v)) wrong_type(name, "an int", v);
  PyObject* idx = PyNumber_Index(v.ptr());
  if (!idx) {
    PyErr_Clear();
    wrong_type(name, "an int", v);
  }
  return py::reinterpret_steal<py::object>(idx);
}

int64_t int_arg(py::handle v, const char* name) {
  py::object idx = as_index(v, name);
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(idx.ptr(), &overflow);
  if (overflow || (x == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    throw Error(std::string(name) + " must be an int in -2**63..2**63-1, got " +
                std::string(py::repr(idx)));
  }
  return x;
}

uint64_t u64_arg(py::handle v, const char* name) {
  py::object idx = as_index(v, name);
  const unsigned long long x = PyLong_AsUnsignedLongLong(idx.ptr());
  if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw Error(std::string(name) + " must be an int in 0..2**64-1, got " +
                std::string(py::repr(idx)));
  }
  return x;
}

double float_arg(py::handle v, const char* name) {
  PyObject* o = v.ptr();
  if (PyFloat_Check(o)) return PyFloat_AS_DOUBLE(o);
  const bool number = is_int_like(v) ||
                      (!is_bool_like(v) && !py::isinstance<py::array>(v) &&
                       Py_TYPE(o)->tp_as_number && Py_TYPE(o)->tp_as_number->nb_float);
  if (!number) wrong_type(name, "a number (int or float)", v);
  const double d = PyFloat_AsDouble(o);
  if (d == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    throw Error(std::string(name) + " must be a number that fits a float, got " +
                std::string(py::repr(v)));
  }
  return d;
}

bool bool_arg(py::handle v, const char* name) {
  if (!is_bool_like(v)) wrong_type(name, "a bool", v);
  return PyObject_IsTrue(v.ptr()) == 1;
}

std::string str_arg(py::handle v, const char* name) {
  if (!PyUnicode_Check(v.ptr())) wrong_type(name, "a str", v);
  Py_ssize_t len = 0;
  const char* utf8 = PyUnicode_AsUTF8AndSize(v.ptr(), &len);
  if (!utf8) {
    PyErr_Clear();
    throw Error(std::string(name) + " must be text encodable as UTF-8");
  }
  return std::string(utf8, static_cast<size_t>(len));
}

// A call of the wrong shape (missing, unexpected or surplus arguments) must raise
// igw._core.Error too: every function gets this as its last overload, which pybind11 only
// reaches when the real one does not fit. `sig` lists the parameters as in _core.pyi.
[[noreturn]] void bad_call(const std::string& fn, std::string_view sig, const py::args& args,
                           const py::kwargs& kw) {
  std::vector<std::string> names;
  std::vector<bool> required;
  size_t max_positional = SIZE_MAX;
  for (size_t start = 0; start < sig.size();) {
    size_t end = sig.find(", ", start);
    if (end == std::string_view::npos) end = sig.size();
    const std::string_view item = sig.substr(start, end - start);
    if (item == "*") {
      max_positional = names.size();
    } else {
      const size_t eq = item.find('=');
      names.emplace_back(item.substr(0, eq));
      required.push_back(eq == std::string_view::npos);
    }
    start = end + 2;
  }
  max_positional = std::min(max_positional, names.size());
  const size_t given = args.size();
  std::string why;
  if (given > max_positional) {
    why = "takes at most " + std::to_string(max_positional) + " positional argument" +
          (max_positional == 1 ? "" : "s") + " (" + std::to_string(given) + " given)";
  }
  for (auto item : kw) {
    if (!why.empty()) break;
    const std::string key = py::str(item.first);
    const auto it = std::find(names.begin(), names.end(), key);
    if (it == names.end()) {
      why = "got an unexpected keyword argument '" + key + "'";
    } else if (static_cast<size_t>(it - names.begin()) < std::min(given, max_positional)) {
      why = "got multiple values for argument '" + key + "'";
    }
  }
  for (size_t i = 0; i < names.size() && why.empty(); ++i) {
    if (required[i] && !(i < given && i < max_positional) && !kw.contains(names[i]))
      why = "missing required argument '" + names[i] + "'";
  }
  if (why.empty()) why = "arguments do not match its signature";
  throw Error(fn + "() " + why + "; expected " + fn + "(" + std::string(sig) + ")");
}

// The last-resort overload of a method (self is ignored) or of a module function.
auto bad_method(const char* fn, const char* sig) {
  return [fn, sig](py::handle, const py::args& a, const py::kwargs& k) { bad_call(fn, sig, a, k); };
}
auto bad_function(const char* fn, const char* sig) {
  return [fn, sig](const py::args& a, const py::kwargs& k) { bad_call(fn, sig, a, k); };
}

uint32_t endpoint_arg(int64_t endpoint, const char* what) {
  if (endpoint < 0 || endpoint > static_cast<int64_t>(kMaxEndpoints))
    throw Error(std::string(what) + ": endpoint " + std::to_string(endpoint) +
                " is not a valid endpoint id");
  return static_cast<uint32_t>(endpoint);
}

std::span<const uint8_t> bytes_view(py::handle obj, py::buffer_info& info,
                                    const char* name = "data") {
  if (!PyObject_CheckBuffer(obj.ptr()))
    wrong_type(name, "bytes, bytearray or a contiguous buffer", obj);
  info = py::reinterpret_borrow<py::buffer>(obj).request();
  py::ssize_t expect = info.itemsize;  // C-contiguous: each stride is the size of the rest
  for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
    if (info.shape[i] > 1 && info.strides[i] != expect)
      throw Error(std::string(name) +
                  " must be a contiguous buffer (bytes, bytearray or a contiguous view)");
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
                  bool with_scores, int64_t charge) {
  PickRequest req;
  py::array_t<uint64_t, py::array::c_style> h;
  std::vector<uint64_t> own_hashes;
  py::buffer_info prompt_info;
  std::span<const uint8_t> prompt_bytes;
  const bool has_prompt = !prompt.is_none();
  if (has_prompt) {
    if (!hashes.is_none()) throw Error("pass either hashes or prompt, not both");
    if (block_bytes < 1) throw Error("block_bytes must be >= 1, got " + std::to_string(block_bytes));
    if (max_blocks < 0) throw Error("max_blocks must be >= 0, got " + std::to_string(max_blocks));
    prompt_bytes = bytes_view(prompt, prompt_info, "prompt");
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
  req.charge = charge;
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

std::optional<std::vector<int>> adapter_list(py::handle obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  if (!PyList_Check(obj.ptr()) && !PyTuple_Check(obj.ptr()))
    throw Error(std::string(name) + " must be a list of adapter ids (int) or None, got " +
                type_name(obj));
  std::vector<int> ids;
  for (auto item : py::reinterpret_borrow<py::sequence>(obj)) {
    if (!is_int_like(item))
      throw Error(std::string(name) + " must be a list of adapter ids (int), got an item of type " +
                  type_name(item));
    const int64_t a = int_arg(item, name);
    if (a < 0 || a >= kMaxAdapters)
      throw Error(std::string(name) + ": adapter id " + std::to_string(a) +
                  " is not registered (see adapter_id)");
    ids.push_back(static_cast<int>(a));
  }
  return ids;
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
      std::get<1>(t) = float_arg(seq[1], "weight");
    } catch (const Error&) {
      throw Error(where + " (" + std::get<0>(t) + "): weight must be a number, got " +
                  type_name(seq[1]));
    }
    py::object params = seq[2];
    if (!params.is_none()) {
      if (!py::isinstance<py::dict>(params)) throw Error(where + ": params must be a dict");
      for (auto [key, value] : py::reinterpret_borrow<py::dict>(params)) {
        if (!py::isinstance<py::str>(key)) throw Error(where + ": parameter names must be str");
        double v;
        try {
          v = float_arg(value, "value");
        } catch (const Error&) {
          throw Error(std::get<0>(t) + ": parameter " + key.cast<std::string>() +
                      " must be a number, got " + type_name(value));
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
PyPickResult pick_kwargs(Scheduler& self, py::handle profile_obj, const py::kwargs& kw) {
  if (!py::isinstance<Profile>(profile_obj)) wrong_type("profile", "an igw._core.Profile", profile_obj);
  const Profile& profile = profile_obj.cast<const Profile&>();
  py::object hashes = py::none(), prompt = py::none(), candidates = py::none();
  py::object extra_scores = py::none(), extra_weights = py::none();
  int64_t block_bytes = 256, max_blocks = 0, prompt_tokens = 0, block_tokens = 64, k = 1;
  uint64_t seed = 0;
  int lora = -1;
  bool reserve = true, record = true, with_scores = false;
  int64_t charge = 0;
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
    else if (name == "block_bytes") block_bytes = int_arg(v, key);
    else if (name == "max_blocks") max_blocks = int_arg(v, key);
    else if (name == "prompt_tokens") prompt_tokens = int_arg(v, key);
    else if (name == "block_tokens") block_tokens = int_arg(v, key);
    else if (name == "k") k = int_arg(v, key);
    else if (name == "seed") seed = u64_arg(v, key);
    else if (name == "lora") {
      const int64_t l = int_arg(v, key);
      if (l < INT32_MIN || l > INT32_MAX)
        throw Error("lora must be -1 (none), an adapter id in 0..255 or 256 (unknown adapter), "
                    "got " + std::to_string(l));
      lora = static_cast<int>(l);
    }
    else if (name == "reserve") reserve = bool_arg(v, key);
    else if (name == "record") record = bool_arg(v, key);
    else if (name == "with_scores") with_scores = bool_arg(v, key);
    else if (name == "charge") charge = int_arg(v, key);
    else throw Error("pick() got an unexpected keyword argument '" + std::string(name) + "'");
  }
  return pick(self, profile, hashes, prompt, block_bytes, seed, max_blocks, prompt_tokens,
              block_tokens, lora, candidates, k, extra_scores, extra_weights, reserve, record,
              with_scores, charge);
}

// The fast calls' shared arguments (pick_reserve, route), checked as pick() checks them.
void fill_fast_request(PickRequest& req, int64_t prompt_tokens, int64_t block_tokens,
                       int64_t lora, int64_t k, int64_t charge) {
  if (k < 1 || k > kMaxEndpoints) throw Error("k must be in 1..65535, got " + std::to_string(k));
  if (lora < INT32_MIN || lora > INT32_MAX)
    throw Error("lora must be -1 (none), an adapter id in 0..255 or 256 (unknown adapter), "
                "got " + std::to_string(lora));
  req.k = static_cast<uint32_t>(k);
  req.prompt_tokens = prompt_tokens;
  req.block_tokens = block_tokens;
  req.lora = lora < 0 ? -1 : static_cast<int>(lora);
  req.charge = charge;
}

// The fast calls' result head: the ranked endpoints as a list, and the primary's matched
// blocks (0 when nothing was eligible).
std::pair<py::list, int64_t> ranked_and_matched(const PickOutput& out) {
  py::list ranked(out.endpoints.size());
  for (size_t i = 0; i < out.endpoints.size(); ++i) ranked[i] = py::int_(out.endpoints[i]);
  int64_t matched = 0;
  if (!out.endpoints.empty() && out.endpoints[0] < out.matched.size())
    matched = out.matched[out.endpoints[0]];
  return {std::move(ranked), matched};
}

// pick_reserve(profile, hashes, prompt_tokens, block_tokens, lora, k, charge): the routing
// path's usual pick (no candidate mask, no Python scores, reserve and record) with positional
// arguments and a plain tuple back. Measured: pick() spends most of its ~2.6 us in argument
// and result handling (a kwargs dict, name compares, a numpy array, a result object); this
// costs about half, and the gateway calls it on every request.
py::tuple pick_reserve(Scheduler& self, py::handle profile_obj, py::handle hashes,
                       int64_t prompt_tokens, int64_t block_tokens, int64_t lora, int64_t k,
                       int64_t charge) {
  if (!py::isinstance<Profile>(profile_obj)) wrong_type("profile", "an igw._core.Profile", profile_obj);
  const Profile& profile = profile_obj.cast<const Profile&>();
  PickRequest req;
  py::array_t<uint64_t, py::array::c_style> h;
  if (!hashes.is_none()) {
    h = require_array<uint64_t>(hashes, "hashes", 1, "uint64");
    req.hashes = {h.data(), static_cast<size_t>(h.shape(0))};
  }
  fill_fast_request(req, prompt_tokens, block_tokens, lora, k, charge);
  PickOutput out;
  {
    py::gil_scoped_release release;
    self.pick(profile, req, out);
  }
  auto [ranked, matched] = ranked_and_matched(out);
  return py::make_tuple(std::move(ranked), matched, out.total_blocks, out.uncached_tokens);
}

// route(profile, prompt, seed, block_bytes, max_blocks, prompt_tokens, block_tokens, lora, k,
// charge, hot_charge, hot_factor): the gateway's whole per-request core step in one call --
// hash the prompt's blocks, count it in the pool's prefix demand (hot_factor > 0), charge
// hot_charge instead of charge when its group is hot, pick, reserve and record. Returns
// (ranked endpoints, primary's matched blocks, total blocks, uncached tokens, hashes, hot).
// One crossing instead of three (hash_blocks, the Python demand, pick_reserve): on the c=1
// trace of a real gateway those cost ~12 us between them with cold caches.
py::tuple route(Scheduler& self, py::handle profile_obj, py::handle prompt, uint64_t seed,
                int64_t block_bytes, int64_t max_blocks, int64_t prompt_tokens,
                int64_t block_tokens, int64_t lora, int64_t k, int64_t charge,
                int64_t hot_charge, double hot_factor, bool record) {
  if (!py::isinstance<Profile>(profile_obj)) wrong_type("profile", "an igw._core.Profile", profile_obj);
  const Profile& profile = profile_obj.cast<const Profile&>();
  if (block_bytes < 1) throw Error("block_bytes must be >= 1, got " + std::to_string(block_bytes));
  if (max_blocks < 0) throw Error("max_blocks must be >= 0, got " + std::to_string(max_blocks));
  PickRequest req;
  fill_fast_request(req, prompt_tokens, block_tokens, lora, k, charge);
  req.record = record;
  if (hot_charge < 0) throw Error("hot_charge must be >= 0, got " + std::to_string(hot_charge));
  if (!std::isfinite(hot_factor)) throw Error("hot_factor must be finite");
  py::buffer_info info;
  const std::span<const uint8_t> data = bytes_view(prompt, info, "prompt");
  const size_t n = block_count(data.size(), static_cast<size_t>(block_bytes),
                               static_cast<size_t>(max_blocks));
  py::array_t<uint64_t> hashes(static_cast<py::ssize_t>(n));
  const std::span<uint64_t> h{hashes.mutable_data(), n};
  req.hashes = h;
  bool hot = false;
  PickOutput out;
  {
    py::gil_scoped_release release;
    hash_blocks(data, static_cast<size_t>(block_bytes), seed, static_cast<size_t>(max_blocks), h);
    if (hot_factor > 0 && n > 0) {
      hot = self.hot(h[demand_key_index(n)], hot_factor);
      if (hot) req.charge = hot_charge;
    }
    self.pick(profile, req, out);
  }
  auto [ranked, matched] = ranked_and_matched(out);
  return py::make_tuple(std::move(ranked), matched, out.total_blocks, out.uncached_tokens,
                        std::move(hashes), hot);
}

// Scheduler.filter(profile, *, hashes=None, candidates=None): the profile's filters alone,
// for a core filter that must run between Python filters (see _core.pyi).
py::array_t<bool> filter_kwargs(Scheduler& self, py::handle profile_obj, const py::kwargs& kw) {
  if (!py::isinstance<Profile>(profile_obj)) wrong_type("profile", "an igw._core.Profile", profile_obj);
  const Profile& profile = profile_obj.cast<const Profile&>();
  py::object hashes = py::none(), candidates = py::none();
  for (auto item : kw) {
    const std::string name = py::str(item.first);
    if (name == "hashes") hashes = py::reinterpret_borrow<py::object>(item.second);
    else if (name == "candidates") candidates = py::reinterpret_borrow<py::object>(item.second);
    else throw Error("filter() got an unexpected keyword argument '" + name + "'");
  }
  PickRequest req;
  py::array_t<uint64_t, py::array::c_style> h;
  if (!hashes.is_none()) {
    h = require_array<uint64_t>(hashes, "hashes", 1, "uint64");
    req.hashes = {h.data(), static_cast<size_t>(h.shape(0))};
  }
  const auto hw = static_cast<py::ssize_t>(self.table()->high_water());
  py::array_t<bool> keep;
  if (!candidates.is_none()) {
    auto cand = require_array<bool>(candidates, "candidates", 1, "bool");
    if (cand.shape(0) < hw)
      throw Error("candidates has length " + std::to_string(cand.shape(0)) +
                  ", expected >= high_water " + std::to_string(hw));
    keep = py::array_t<bool>(cand.shape(0));
    std::copy(cand.data(), cand.data() + cand.shape(0), keep.mutable_data());
  } else {
    keep = py::array_t<bool>(hw);
    std::fill(keep.mutable_data(), keep.mutable_data() + hw, true);
  }
  // the core reads the candidates from the output buffer: filters only clear entries of it
  req.candidates = {keep.data(), static_cast<size_t>(keep.shape(0))};
  req.has_candidates = true;
  std::span<bool> out(keep.mutable_data(), static_cast<size_t>(keep.shape(0)));
  {
    py::gil_scoped_release release;
    self.filter(profile, req, out);
  }
  return keep;
}

// update() runs once per endpoint per scrape (10,000 endpoints every 50 ms = 200k calls/s),
// so, like pick, it walks only the keywords passed instead of pybind11's per-name lookups
// (1.2 -> 0.7 us per call). Same names, defaults and errors as _core.pyi.
void update_kwargs(EndpointTable& t, py::handle e, const py::kwargs& kw) {
  static constexpr const char* kSig =
      "endpoint, *, waiting, running, kv_util, now, kv_blocks=-1, block_size=-1, max_lora=-1, "
      "lora_active=None, lora_waiting=None";
  py::handle waiting_obj, running_obj, kv_util, now, lora_active, lora_waiting;
  int64_t kv_blocks = -1, block_size = -1, max_lora = -1;
  for (auto item : kw) {
    Py_ssize_t len = 0;
    const char* key = PyUnicode_AsUTF8AndSize(item.first.ptr(), &len);
    if (!key) throw py::error_already_set();
    const std::string_view name(key, static_cast<size_t>(len));
    const py::handle v = item.second;
    if (name == "waiting") waiting_obj = v;
    else if (name == "running") running_obj = v;
    else if (name == "kv_util") kv_util = v;
    else if (name == "now") now = v;
    else if (name == "kv_blocks") kv_blocks = int_arg(v, key);
    else if (name == "block_size") block_size = int_arg(v, key);
    else if (name == "max_lora") max_lora = int_arg(v, key);
    else if (name == "lora_active") lora_active = v;
    else if (name == "lora_waiting") lora_waiting = v;
    else
      throw Error("EndpointTable.update() got an unexpected keyword argument '" +
                  std::string(name) + "'; expected EndpointTable.update(" + kSig + ")");
  }
  const std::pair<const char*, py::handle> required[] = {
      {"waiting", waiting_obj}, {"running", running_obj}, {"kv_util", kv_util}, {"now", now}};
  for (const auto& [name, value] : required)
    if (!value)
      throw Error(std::string("EndpointTable.update() missing required argument '") + name +
                  "'; expected EndpointTable.update(" + kSig + ")");
  const uint32_t ep = endpoint_arg(int_arg(e, "endpoint"), "update");
  const int64_t waiting = int_arg(waiting_obj, "waiting");
  const int64_t running = int_arg(running_obj, "running");
  if (waiting < 0 || running < 0 || waiting > INT32_MAX || running > INT32_MAX)
    throw Error("waiting and running must be in 0..2^31-1, got " + std::to_string(waiting) +
                ", " + std::to_string(running));
  MetricsUpdate u{static_cast<int32_t>(waiting), static_cast<int32_t>(running),
                  float_arg(kv_util, "kv_util"), float_arg(now, "now"), kv_blocks, block_size,
                  max_lora};
  auto act = lora_active ? adapter_list(lora_active, "lora_active") : std::nullopt;
  auto wai = lora_waiting ? adapter_list(lora_waiting, "lora_waiting") : std::nullopt;
  u.lora_active = act ? &*act : nullptr;
  u.lora_waiting = wai ? &*wai : nullptr;
  t.update(ep, u);
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

  m.attr("UNKNOWN_ADAPTER") = kMaxAdapters;
  m.attr("DEMAND_KEY_BLOCKS") = kDemandKeyBlocks;

  m.def("xxh64",
        [](py::handle data, py::handle seed) {
          py::buffer_info info;
          auto d = bytes_view(data, info);
          return xxh64(d.data(), d.size(), u64_arg(seed, "seed"));
        },
        py::arg("data"), py::arg("seed") = 0);
  m.def("xxh64", bad_function("xxh64", "data, seed=0"));
  m.def("model_seed",
        [](py::handle model, py::handle salt, py::handle lora) {
          return model_seed(str_arg(model, "model"), str_arg(salt, "cache_salt"),
                            str_arg(lora, "lora"));
        },
        py::arg("model"), py::arg("cache_salt") = "", py::arg("lora") = "");
  m.def("model_seed", bad_function("model_seed", "model, cache_salt='', lora=''"));
  m.def("hash_blocks",
        [](py::handle data, py::handle block_bytes, py::handle seed, py::handle max_blocks) {
          py::buffer_info info;
          auto d = bytes_view(data, info);
          return hash_bytes(d, int_arg(block_bytes, "block_bytes"), u64_arg(seed, "seed"),
                            int_arg(max_blocks, "max_blocks"), "block_bytes");
        },
        py::arg("data"), py::arg("block_bytes"), py::arg("seed"), py::arg("max_blocks") = 0);
  m.def("hash_blocks", bad_function("hash_blocks", "data, block_bytes, seed, max_blocks=0"));
  m.def("hash_token_blocks",
        [](py::handle tokens, py::handle block_tokens_obj, py::handle seed, py::handle max_blocks) {
          auto t = require_array<uint32_t>(tokens, "tokens", 1, "uint32");
          const int64_t block_tokens = int_arg(block_tokens_obj, "block_tokens");
          if (block_tokens < 1 || block_tokens > INT64_MAX / 4)
            throw Error("block_tokens must be >= 1, got " + std::to_string(block_tokens));
          std::span<const uint8_t> d{reinterpret_cast<const uint8_t*>(t.data()),
                                     static_cast<size_t>(t.shape(0)) * 4};
          return hash_bytes(d, block_tokens * 4, u64_arg(seed, "seed"),
                            int_arg(max_blocks, "max_blocks"), "block_tokens");
        },
        py::arg("tokens"), py::arg("block_tokens"), py::arg("seed"), py::arg("max_blocks") = 0);
  m.def("hash_token_blocks",
        bad_function("hash_token_blocks", "tokens, block_tokens, seed, max_blocks=0"));

  auto table_endpoint = [](py::handle e, const char* what) {
    return endpoint_arg(int_arg(e, "endpoint"), what);
  };
  table
      .def(py::init([](py::handle capacity_obj) {
             const int64_t capacity = int_arg(capacity_obj, "capacity");
             if (capacity < 1 || capacity > kMaxEndpoints)
               throw Error("capacity must be in 1..65535, got " + std::to_string(capacity));
             return std::make_shared<EndpointTable>(static_cast<uint32_t>(capacity));
           }),
           py::arg("capacity") = 4096)
      .def(py::init([](const py::args& a, const py::kwargs& k) -> std::shared_ptr<EndpointTable> {
        bad_call("EndpointTable", "capacity=4096", a, k);
      }))
      .def_property_readonly("capacity", &EndpointTable::capacity)
      .def_property_readonly("high_water", &EndpointTable::high_water)
      .def_property_readonly("version", &EndpointTable::version)
      .def("__len__", &EndpointTable::size)
      .def("add", &EndpointTable::add)
      .def("add", bad_method("EndpointTable.add", ""))
      .def("remove",
           [=](EndpointTable& t, py::handle e) { t.remove(table_endpoint(e, "remove")); },
           py::arg("endpoint"))
      .def("remove", bad_method("EndpointTable.remove", "endpoint"))
      .def("is_live",
           [](const EndpointTable& t, py::handle e) { return t.is_live(int_arg(e, "endpoint")); },
           py::arg("endpoint"))
      .def("is_live", bad_method("EndpointTable.is_live", "endpoint"))
      .def("update", &update_kwargs, py::arg("endpoint"),
           "update(endpoint, *, waiting, running, kv_util, now, kv_blocks=-1, block_size=-1, "
           "max_lora=-1, lora_active=None, lora_waiting=None) (see _core.pyi)")
      .def("update", bad_method("EndpointTable.update",
                                "endpoint, *, waiting, running, kv_util, now, kv_blocks=-1, "
                                "block_size=-1, max_lora=-1, lora_active=None, lora_waiting=None"))
      .def("set_ready",
           [=](EndpointTable& t, py::handle e, py::handle r) {
             const uint32_t ep = table_endpoint(e, "set_ready");
             t.set_ready(ep, bool_arg(r, "ready"));
           },
           py::arg("endpoint"), py::arg("ready"))
      .def("set_ready", bad_method("EndpointTable.set_ready", "endpoint, ready"))
      .def("set_prefill_rate",
           [=](EndpointTable& t, py::handle e, py::handle r) {
             const uint32_t ep = table_endpoint(e, "set_prefill_rate");
             t.set_prefill_rate(ep, float_arg(r, "tokens_per_second"));
           },
           py::arg("endpoint"), py::arg("tokens_per_second"))
      .def("set_prefill_rate",
           bad_method("EndpointTable.set_prefill_rate", "endpoint, tokens_per_second"))
      .def("add_inflight",
           [=](EndpointTable& t, py::handle e, py::handle req, py::handle tok) {
             const uint32_t ep = table_endpoint(e, "add_inflight");
             t.add_inflight(ep, int_arg(req, "requests"), int_arg(tok, "tokens"));
           },
           py::arg("endpoint"), py::arg("requests"), py::arg("tokens"))
      .def("add_inflight", bad_method("EndpointTable.add_inflight", "endpoint, requests, tokens"))
      .def("inflight_requests_of",
           [=](const EndpointTable& t, py::handle e) {
             return t.inflight_requests_of(table_endpoint(e, "inflight_requests_of"));
           },
           py::arg("endpoint"))
      .def("inflight_requests_of", bad_method("EndpointTable.inflight_requests_of", "endpoint"))
      .def("adapter_id",
           [](EndpointTable& t, py::handle name) { return t.adapter_id(str_arg(name, "name")); },
           py::arg("name"))
      .def("adapter_id", bad_method("EndpointTable.adapter_id", "name"))
      .def("find_adapter",
           [](const EndpointTable& t, py::handle name) {
             return t.find_adapter(str_arg(name, "name"));
           },
           py::arg("name"))
      .def("find_adapter", bad_method("EndpointTable.find_adapter", "name"))
      .def("adapter_name",
           [](const EndpointTable& t, py::handle adapter) {
             const int64_t a = int_arg(adapter, "adapter");
             if (a < 0 || a >= kMaxAdapters)
               throw Error("adapter id " + std::to_string(a) + " is not registered");
             return t.adapter_name(static_cast<int>(a));
           },
           py::arg("adapter"))
      .def("adapter_name", bad_method("EndpointTable.adapter_name", "adapter"))
      .def("snapshot", &snapshot)
      .def("snapshot", bad_method("EndpointTable.snapshot", ""))
      .def("inflight",
           [](const EndpointTable& t) {
             const auto n = static_cast<py::ssize_t>(t.high_water());
             py::array_t<int32_t> requests(n);
             py::array_t<int64_t> tokens(n);
             int32_t* r = requests.mutable_data();
             int64_t* k = tokens.mutable_data();
             {
               py::gil_scoped_release release;
               t.inflight(static_cast<size_t>(n), r, k);
             }
             return py::make_tuple(requests, tokens);
           })
      .def("inflight", bad_method("EndpointTable.inflight", ""));

  auto index_endpoint = [](const PrefixIndex& ix, py::handle obj, const char* what) {
    const int64_t e = int_arg(obj, "endpoint");
    if (e < 0 || e >= static_cast<int64_t>(ix.max_endpoints()))
      throw Error(std::string(what) + ": endpoint " + std::to_string(e) + " out of range 0.." +
                  std::to_string(ix.max_endpoints() - 1));
    return static_cast<uint32_t>(e);
  };
  index
      .def(py::init([](py::handle max_obj, py::handle cap_obj) {
             const int64_t max_endpoints = int_arg(max_obj, "max_endpoints");
             const int64_t default_capacity = int_arg(cap_obj, "default_capacity");
             if (max_endpoints < 1 || max_endpoints > kMaxEndpoints)
               throw Error("max_endpoints must be in 1..65535, got " +
                           std::to_string(max_endpoints));
             if (default_capacity < 0 || default_capacity > UINT32_MAX)
               throw Error("default_capacity must be in 0..2^32-1, got " +
                           std::to_string(default_capacity));
             return std::make_shared<PrefixIndex>(static_cast<uint32_t>(max_endpoints),
                                                  static_cast<uint32_t>(default_capacity));
           }),
           py::arg("max_endpoints") = 4096, py::arg("default_capacity") = 31250)
      .def(py::init([](const py::args& a, const py::kwargs& k) -> std::shared_ptr<PrefixIndex> {
        bad_call("PrefixIndex", "max_endpoints=4096, default_capacity=31250", a, k);
      }))
      .def("set_capacity",
           [=](PrefixIndex& ix, py::handle e, py::handle blocks_obj) {
             auto ep = index_endpoint(ix, e, "set_capacity");
             const int64_t blocks = int_arg(blocks_obj, "blocks");
             if (blocks < 0 || blocks > UINT32_MAX)
               throw Error("blocks must be in 0..2^32-1, got " + std::to_string(blocks));
             py::gil_scoped_release release;
             ix.set_capacity(ep, static_cast<uint32_t>(blocks));
           },
           py::arg("endpoint"), py::arg("blocks"))
      .def("set_capacity", bad_method("PrefixIndex.set_capacity", "endpoint, blocks"))
      .def("capacity_of",
           [=](const PrefixIndex& ix, py::handle e) {
             return ix.capacity_of(index_endpoint(ix, e, "capacity_of"));
           },
           py::arg("endpoint"))
      .def("capacity_of", bad_method("PrefixIndex.capacity_of", "endpoint"))
      .def("record",
           [=](PrefixIndex& ix, py::handle e, py::handle hashes) {
             auto ep = index_endpoint(ix, e, "record");
             auto h = require_array<uint64_t>(hashes, "hashes", 1, "uint64");
             std::span<const uint64_t> s{h.data(), static_cast<size_t>(h.shape(0))};
             py::gil_scoped_release release;
             ix.record(ep, s);
           },
           py::arg("endpoint"), py::arg("hashes"))
      .def("record", bad_method("PrefixIndex.record", "endpoint, hashes"))
      .def("match",
           [](const PrefixIndex& ix, py::handle hashes) {
             auto h = require_array<uint64_t>(hashes, "hashes", 1, "uint64");
             std::span<const uint64_t> s{h.data(), static_cast<size_t>(h.shape(0))};
             py::array_t<int32_t> out(static_cast<py::ssize_t>(ix.seen()));
             std::span<int32_t> o{out.mutable_data(), static_cast<size_t>(out.shape(0))};
             py::gil_scoped_release release;
             ix.match(s, o);
             return out;
           },
           py::arg("hashes"))
      .def("match", bad_method("PrefixIndex.match", "hashes"))
      .def("remove_endpoint",
           [=](PrefixIndex& ix, py::handle e) {
             auto ep = index_endpoint(ix, e, "remove_endpoint");
             py::gil_scoped_release release;
             ix.remove_endpoint(ep);
           },
           py::arg("endpoint"))
      .def("remove_endpoint", bad_method("PrefixIndex.remove_endpoint", "endpoint"))
      .def("entries", &PrefixIndex::entries)
      .def("entries", bad_method("PrefixIndex.entries", ""))
      .def("blocks", &PrefixIndex::blocks)
      .def("blocks", bad_method("PrefixIndex.blocks", ""))
      .def("endpoint_entries",
           [=](const PrefixIndex& ix, py::handle e) {
             return ix.endpoint_entries(index_endpoint(ix, e, "endpoint_entries"));
           },
           py::arg("endpoint"))
      .def("endpoint_entries", bad_method("PrefixIndex.endpoint_entries", "endpoint"))
      .def("memory_bytes", &PrefixIndex::memory_bytes)
      .def("memory_bytes", bad_method("PrefixIndex.memory_bytes", ""));

  profile
      .def(py::init([](const py::object& scorers, py::handle picker) {
             return Profile(scorer_list(scorers), str_arg(picker, "picker"));
           }),
           py::arg("scorers"), py::arg("picker") = "max-score-picker")
      .def(py::init([](const py::args& a, const py::kwargs& k) -> Profile {
        bad_call("Profile", "scorers, picker='max-score-picker'", a, k);
      }))
      .def_property_readonly("scorer_types", &Profile::scorer_types)
      .def_property_readonly("filter_types", &Profile::filter_types)
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
      .def(py::init([](py::handle t, py::handle ix, py::handle seed) {
             if (!py::isinstance<EndpointTable>(t))
               wrong_type("table", "an igw._core.EndpointTable", t);
             if (!py::isinstance<PrefixIndex>(ix))
               wrong_type("index", "an igw._core.PrefixIndex", ix);
             return std::make_unique<Scheduler>(t.cast<std::shared_ptr<EndpointTable>>(),
                                                ix.cast<std::shared_ptr<PrefixIndex>>(),
                                                u64_arg(seed, "seed"));
           }),
           py::arg("table"), py::arg("index"), py::arg("seed") = 0)
      .def(py::init([](const py::args& a, const py::kwargs& k) -> std::unique_ptr<Scheduler> {
        bad_call("Scheduler", "table, index, seed=0", a, k);
      }))
      .def("pick", &pick_kwargs, py::arg("profile"),
           "pick(profile, *, hashes=None, prompt=None, block_bytes=256, seed=0, max_blocks=0, "
           "prompt_tokens=0, block_tokens=64, lora=-1, candidates=None, k=1, "
           "extra_scores=None, extra_weights=None, reserve=True, record=True, "
           "with_scores=False, charge=0) -> PickResult (see _core.pyi)")
      .def("pick_reserve", &pick_reserve, py::arg("profile"), py::arg("hashes"),
           py::arg("prompt_tokens"), py::arg("block_tokens"), py::arg("lora"), py::arg("k"),
           py::arg("charge") = 0,
           "pick_reserve(profile, hashes, prompt_tokens, block_tokens, lora, k, charge=0) -> "
           "(ranked endpoints, primary's matched blocks, total blocks, uncached tokens)")
      .def("route", &route, py::arg("profile"), py::arg("prompt"), py::arg("seed"),
           py::arg("block_bytes"), py::arg("max_blocks"), py::arg("prompt_tokens"),
           py::arg("block_tokens"), py::arg("lora"), py::arg("k"), py::arg("charge"),
           py::arg("hot_charge"), py::arg("hot_factor"), py::arg("record") = true,
           "route(profile, prompt, seed, block_bytes, max_blocks, prompt_tokens, block_tokens, "
           "lora, k, charge, hot_charge, hot_factor, record=True) -> (ranked endpoints, "
           "primary's matched blocks, total blocks, uncached tokens, hashes, hot) (see "
           "_core.pyi)")
      .def(
          "hot",
          [](Scheduler& self, py::handle key, double factor) {
            if (!std::isfinite(factor)) throw Error("factor must be finite");
            return self.hot(u64_arg(key, "key"), factor);
          },
          py::arg("key"), py::arg("factor"),
          "hot(key, factor) -> bool: count one request of prefix group key in the pool's "
          "demand; whether it wants more than factor endpoints' fair share")
      .def("demand_groups", &Scheduler::demand_groups,
           "prefix groups the pool's demand tracks (bounded)");
  scheduler
      .def("filter", &filter_kwargs, py::arg("profile"),
           "filter(profile, *, hashes=None, candidates=None) -> bool mask (see _core.pyi)")
      .def("filter", bad_method("Scheduler.filter", "profile, *, hashes=None, candidates=None"));
  scheduler.def("pick", bad_method("Scheduler.pick", "profile, *, hashes=None, prompt=None, "
                                   "block_bytes=256, seed=0, max_blocks=0, prompt_tokens=0, "
                                   "block_tokens=64, lora=-1, candidates=None, k=1, "
                                   "extra_scores=None, extra_weights=None, reserve=True, "
                                   "record=True, with_scores=False, charge=0"));
  scheduler.def("pick_reserve",
                bad_method("Scheduler.pick_reserve",
                           "profile, hashes, prompt_tokens, block_tokens, lora, k, charge=0"));
  scheduler.def("route",
                bad_method("Scheduler.route",
                           "profile, prompt, seed, block_bytes, max_blocks, prompt_tokens, "
                           "block_tokens, lora, k, charge, hot_charge, hot_factor, "
                           "record=True"));
  scheduler.def("hot", bad_method("Scheduler.hot", "key, factor"));
}

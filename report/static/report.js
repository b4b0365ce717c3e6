// LINE report: sorting, filtering and paging of the index, arrow keys between neuron pages,
// and (only when served by `line view`) reloading pages as the run writes new results.
(function () {
  "use strict";
  var root = document.documentElement;

  function readHash() {
    var state = { sort: "", dir: "", q: "", status: "", page: 1 };
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var pair = part.split("=");
      if (pair[0] in state && pair.length === 2) {
        state[pair[0]] = decodeURIComponent(pair[1]);
      }
    });
    state.page = Math.max(1, parseInt(state.page, 10) || 1);
    return state;
  }

  function writeHash(state) {
    var parts = [];
    Object.keys(state).forEach(function (key) {
      var value = state[key];
      if (value !== "" && !(key === "page" && value === 1)) {
        parts.push(key + "=" + encodeURIComponent(value));
      }
    });
    var hash = parts.length ? "#" + parts.join("&") : "";
    if (hash !== location.hash) {
      history.replaceState(null, "", location.pathname + location.search + hash);
    }
  }

  function setupIndex() {
    var table = document.getElementById("neurons");
    if (!table) {
      return;
    }
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) { row.dataset.order = String(i); });
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var filter = document.getElementById("filter");
    var statusFilter = document.getElementById("status-filter");
    var shown = document.getElementById("shown");
    var pageInfo = document.getElementById("page-info");
    var prev = document.getElementById("prev");
    var next = document.getElementById("next");
    var pageSize = parseInt(table.dataset.pageSize, 10) || 50;
    var state = readHash();
    filter.value = state.q;
    statusFilter.value = state.status;

    function cellValue(row, index, type) {
      var cell = row.cells[index];
      var raw = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent.trim();
      if (type === "num") {
        return raw === "" ? null : parseFloat(raw);
      }
      return raw === "" ? null : raw;
    }

    function compare(a, b, index, type, dir) {
      var va = cellValue(a, index, type);
      var vb = cellValue(b, index, type);
      if (va === null || vb === null) {
        if (va === vb) {
          return a.dataset.order - b.dataset.order;
        }
        return va === null ? 1 : -1; // blanks last in either direction
      }
      var order = type === "num" ? va - vb : String(va).localeCompare(String(vb));
      if (order === 0) {
        return a.dataset.order - b.dataset.order;
      }
      return dir === "asc" ? order : -order;
    }

    function apply() {
      var query = state.q.trim().toLowerCase();
      var visible = rows.filter(function (row) {
        return (!query || row.dataset.label.indexOf(query) !== -1) &&
          (!state.status || row.dataset.status === state.status);
      });
      var header = headers.filter(function (th) { return th.dataset.key === state.sort; })[0];
      if (header) {
        visible.sort(function (a, b) {
          return compare(a, b, header.cellIndex, header.dataset.type, state.dir);
        });
      } else {
        visible.sort(function (a, b) { return a.dataset.order - b.dataset.order; });
      }
      var pages = Math.max(1, Math.ceil(visible.length / pageSize));
      state.page = Math.min(state.page, pages);
      var start = (state.page - 1) * pageSize;
      var fragment = document.createDocumentFragment();
      rows.forEach(function (row) { row.hidden = true; });
      visible.forEach(function (row, i) {
        row.hidden = i < start || i >= start + pageSize;
        fragment.appendChild(row);
      });
      var kept = new Set(visible);
      rows.forEach(function (row) {
        if (!kept.has(row)) {
          fragment.appendChild(row);
        }
      });
      body.appendChild(fragment);
      headers.forEach(function (th) {
        if (th.dataset.key) {
          var sorted = th.dataset.key === state.sort;
          th.setAttribute("aria-sort", sorted ? (state.dir === "asc" ? "ascending" : "descending")
            : "none");
        }
      });
      shown.textContent = visible.length === rows.length
        ? rows.length + " neurons"
        : visible.length + " of " + rows.length + " neurons";
      pageInfo.textContent = "page " + state.page + " of " + pages;
      prev.disabled = state.page <= 1;
      next.disabled = state.page >= pages;
      writeHash(state);
    }

    headers.forEach(function (th) {
      var button = th.querySelector("button");
      if (!button) {
        return;
      }
      button.addEventListener("click", function () {
        if (state.sort === th.dataset.key) {
          state.dir = state.dir === "asc" ? "desc" : "asc";
        } else {
          state.sort = th.dataset.key;
          state.dir = th.dataset.type === "num" && th.dataset.key !== "unit" ? "desc" : "asc";
        }
        state.page = 1;
        apply();
      });
    });
    filter.addEventListener("input", function () {
      state.q = filter.value;
      state.page = 1;
      apply();
    });
    statusFilter.addEventListener("change", function () {
      state.status = statusFilter.value;
      state.page = 1;
      apply();
    });
    prev.addEventListener("click", function () { state.page -= 1; apply(); });
    next.addEventListener("click", function () { state.page += 1; apply(); });
    apply();
  }

  function setupNeuronKeys() {
    if (root.dataset.page !== "neuron") {
      return;
    }
    document.addEventListener("keydown", function (event) {
      if (event.target.closest && event.target.closest("input, textarea, select")) {
        return;
      }
      var link = null;
      if (event.key === "ArrowLeft") {
        link = document.getElementById("prev-neuron");
      } else if (event.key === "ArrowRight") {
        link = document.getElementById("next-neuron");
      }
      if (link) {
        location.href = link.href;
      }
    });
  }

  function setupLive() {
    var version = root.dataset.live;
    if (!version || version === "0" || location.protocol.indexOf("http") !== 0) {
      return;
    }
    var badge = document.getElementById("live");
    function poll() {
      fetch("/_live", { cache: "no-store" })
        .then(function (response) { return response.json(); })
        .then(function (status) {
          badge.hidden = false;
          badge.classList.remove("stopped");
          badge.textContent = "live · " + status.finished + " of " + status.total +
            " neurons finished";
          if (String(status.version) !== version) {
            location.reload();
            return;
          }
          setTimeout(poll, 1500);
        })
        .catch(function () {
          badge.hidden = false;
          badge.classList.add("stopped");
          badge.textContent = "viewer stopped";
          setTimeout(poll, 5000);
        });
    }
    poll();
  }

  setupIndex();
  setupNeuronKeys();
  setupLive();
})();

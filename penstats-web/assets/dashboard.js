// penstats-web's dashboard script: follow /events and put each new live part in place.
//
// The live part is HTML rendered (and escaped) by the server; this script only swaps it in. It
// also makes sure numbers that are no longer current never look current: when the event stream
// breaks, or no update came for three poll intervals, the live part is greyed out and the line
// at the top says so, until updates flow again.
(function () {
  'use strict';
  var live = document.getElementById('live');
  var link = document.getElementById('link');
  if (!live || !link || !window.EventSource) {
    return;
  }
  var interval = Number(live.getAttribute('data-interval-ms')) || 1000;
  var staleAfter = Math.max(3 * interval, 5000);
  var lastUpdate = Date.now();
  var source = null;

  function say(state, text) {
    link.className = 'link link-' + state;
    link.textContent = text;
  }

  function stale(text) {
    live.classList.add('stale');
    say('lost', text + ' The numbers below are not current.');
  }

  function connect() {
    source = new EventSource('/events');
    source.onmessage = function (event) {
      live.innerHTML = event.data;
      lastUpdate = Date.now();
      live.classList.remove('stale');
      say('ok', 'Live: this page updates after every poll of pen.');
    };
    source.onerror = function () {
      stale('Lost contact with penstats-web; reconnecting.');
      // A refused stream (503) is not retried by the browser itself.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, staleAfter);
      }
    };
  }

  connect();
  setInterval(function () {
    var quiet = Date.now() - lastUpdate;
    if (quiet > staleAfter) {
      stale('No update from penstats-web for ' + Math.round(quiet / 1000) + ' s.');
    }
  }, 1000);
})();

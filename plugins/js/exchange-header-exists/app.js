// `x-header-exists` in JavaScript: a message goes to every binding whose key names a header
// the message carries. Build with plugins/build-languages.sh.

function sameBinding(a, b) {
  return a.key === b.key && a.destination.tag === b.destination.tag && a.destination.val === b.destination.val;
}

class Router {
  constructor() {
    this.bindings = [];
  }

  // An error thrown here refuses the declare; its text reaches the client.
  static create(args) {
    if (args.length > 0) {
      throw `x-header-exists takes no arguments, got ${args.map((f) => f.name).join(", ")}`;
    }
    return new Router();
  }

  routesOnKeyOnly() {
    return false;
  }

  validateBinding(b) {
    if (b.key.length === 0) {
      throw "the binding key must name a header";
    }
  }

  addBinding(b) {
    this.bindings.push(b);
  }

  removeBinding(b) {
    const i = this.bindings.findIndex((x) => sameBinding(x, b));
    if (i >= 0) {
      this.bindings.splice(i, 1);
    }
  }

  route(message) {
    const names = new Set(message.headers.map((f) => f.name));
    return this.bindings.filter((b) => names.has(b.key)).map((b) => b.destination);
  }
}

export const exchange = { Router };

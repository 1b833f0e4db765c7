// The Halley demo chat: the CometD browser client (WebSocket where the broker offers it, else
// long-polling), presence from the broker's /service/chat/join service and /chat/<room>/members broadcasts.
import {CometD} from "/demo/cometd/cometd.js";

const $ = id => document.getElementById(id);
const cometd = new CometD();
cometd.configure({url: location.origin + document.body.dataset.bayeuxPath, logLevel: "warn"});

let joined = null; // {room, name, subscriptions}

function status(text) {
    $("status").textContent = text;
}

function note(text) {
    const li = document.createElement("li");
    li.className = "note";
    li.textContent = text;
    $("messages").append(li);
}

function showMembers(members) {
    $("members").replaceChildren(...members.map(name => {
        const li = document.createElement("li");
        li.textContent = name;
        return li;
    }));
}

function showMessage({name, text}) {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = name;
    li.append(who, document.createTextNode(text));
    $("messages").append(li);
    li.scrollIntoView({block: "nearest"});
}

function join(room, name) {
    if (joined) {
        joined.subscriptions.forEach(s => cometd.unsubscribe(s));
        cometd.remoteCall("chat/leave", {room: joined.room}, 5000, () => {});
    }
    cometd.batch(() => {
        const subscriptions = [
            cometd.subscribe(`/chat/${room}`, m => showMessage(m.data)),
            cometd.subscribe(`/chat/${room}/members`, m => showMembers(m.data.members)),
        ];
        joined = {room, name, subscriptions};
    });
    cometd.remoteCall("chat/join", {room, name}, 5000, reply => {
        if (!reply.successful) {
            note(`Could not join: ${reply.data?.error ?? reply.error ?? "no answer"}`);
            return;
        }
        showMembers(reply.data.members);
        $("room-title").textContent = `Messages in ${room}`;
        $("text").disabled = $("send").disabled = false;
        note(`You joined ${room} as ${name}.`);
    });
}

$("join-form").addEventListener("submit", event => {
    event.preventDefault();
    join($("room").value.trim(), $("name").value.trim());
});

$("chat-form").addEventListener("submit", event => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text || !joined) return;
    cometd.publish(`/chat/${joined.room}`, {name: joined.name, text});
    $("text").value = "";
});

cometd.addListener("/meta/connect", reply => {
    status(reply.successful ? `connected (${cometd.getTransport()?.type})` : "reconnecting…");
});

cometd.handshake(reply => {
    if (!reply.successful) {
        status("handshake failed");
        return;
    }
    $("join").disabled = false;
    // After a re-handshake the broker no longer knows our membership: join again.
    if (joined) join(joined.room, joined.name);
});

window.addEventListener("beforeunload", () => cometd.disconnect());
